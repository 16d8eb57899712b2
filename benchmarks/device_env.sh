# Source this first on a lent GPU machine: `source benchmarks/device_env.sh` from the repository root.
#
# The machine has torch, CuPy, NumPy, scikit-learn and statsmodels but not array-api-compat or
# flash-linear-attention; their wheels travel in the ignored folder .whl/ (carry [".whl"]), made here by
#   pip download --no-deps -d .whl fla-core==0.5.2 array-api-compat==1.16.0 einops
# They go into a folder of their own with the machine's own `python -m pip` (a bare `pip` there may belong
# to another interpreter: a 9-minute call once trained nothing because the workers could not import
# array_api_compat), and the imports every benchmark needs are checked before anything long starts:
# on failure this returns 3 (the caller's `|| exit 3` ends the call in seconds).
TTR_PYLIB=${TTR_PYLIB:-/tmp/ttr_pylib}
if ls .whl/*.whl >/dev/null 2>&1; then
    python -m pip install -q --no-deps --root-user-action=ignore --target "$TTR_PYLIB" .whl/*.whl 2>&1 | tail -2
fi
export PYTHONPATH="$PWD:$TTR_PYLIB${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY' || return 3 2>/dev/null || exit 3
import importlib.util, sys
missing = [m for m in ("array_api_compat", "torch", "cupy") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"device_env: missing {', '.join(missing)} (carry .whl/ with their wheels)")
import ttr_stats, torch, cupy  # noqa: F401, E401
fla = importlib.util.find_spec("fla") is not None
print(f"device_env: python {sys.version.split()[0]}, torch {torch.__version__}, cupy {cupy.__version__}, "
      f"fla {'yes' if fla else 'no'}, cuda {torch.cuda.is_available()}")
PY
