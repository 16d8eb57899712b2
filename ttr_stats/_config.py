"""``show_config()``: the array backends and devices the toolkit sees."""

from __future__ import annotations

import importlib
import platform


def _version(mod):
    try:
        return importlib.import_module(mod).__version__
    except Exception:  # noqa: BLE001 - absence or a broken install both mean "not available"
        return None


def show_config(file=None):
    """Print the versions of the core dependencies and the GPU backends available.

    Returns
    -------
    dict
        What was printed, as a mapping (``{"python": ..., "numpy": ..., "cupy": None or version,
        "cuda_devices": [...]}``).
    """
    info = {"python": platform.python_version()}
    for mod in (
        "numpy",
        "scipy",
        "sklearn",
        "statsmodels",
        "matplotlib",
        "array_api_compat",
        "cupy",
        "torch",
    ):
        info[mod] = _version(mod)
    devices = []
    if info["cupy"]:
        try:
            import cupy

            for i in range(cupy.cuda.runtime.getDeviceCount()):
                props = cupy.cuda.runtime.getDeviceProperties(i)
                name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
                devices.append(f"{i}: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
        except Exception as exc:  # noqa: BLE001 - report, do not fail
            devices.append(f"unavailable ({type(exc).__name__}: {exc})")
    info["cuda_devices"] = devices
    width = max(map(len, info))
    for k, v in info.items():
        shown = ", ".join(v) if isinstance(v, list) else v
        print(f"{k:<{width}}  {shown if shown else 'not available'}", file=file)
    return info
