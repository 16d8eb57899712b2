"""torch tensors in -> torch tensors out, equal to NumPy, and differentiable (skipped without torch).

Tolerance: float64 1e-10 relative (the same algorithm on another library's kernels; cond * eps ~ 1e-13
here); gradients are compared with central differences of the NumPy path (h = 1e-6: error ~ h^2 + eps/h).
"""

import numpy as np
import pytest
from conftest import rel_err

import ttr_stats as tt

torch = pytest.importorskip("torch")

# every array the library creates follows the inputs' device (tests/test_torch_device.py proves it on the
# CPU, tests/test_torch_cuda.py runs the whole matrix on a GPU); before that every cuda case failed with
# "Expected all tensors to be on the same device"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RECIPES = {
    "linear_attention": tt.recipes.linear_attention,
    "mesa": lambda: tt.recipes.mesa(ridge=0.5),
    "deltanet": lambda: tt.recipes.deltanet(beta=0.5),
    "softmax_attention": tt.recipes.softmax_attention,
    "local_linear_attention": lambda: tt.recipes.local_linear_attention(ridge=0.1),
    "ttt_linear": lambda: tt.recipes.ttt_linear(lr=0.5, batch_size=4),
    "ttt_mlp": lambda: tt.recipes.ttt_mlp(lr=0.1, batch_size=4),
    "titans": lambda: tt.recipes.titans(lr=0.05),
}


def _data(seed=0, B=2, T=12, d=4, d_v=3):
    rng = np.random.default_rng(seed)
    Q, K = rng.standard_normal((2, B, T, d))
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    return Q, K, rng.standard_normal((B, T, d_v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(RECIPES))
def test_torch_in_torch_out_equals_numpy(name, device):
    Q, K, V = _data()
    layer = RECIPES[name]()
    ref = layer(Q, K, V)
    t = [torch.as_tensor(a, device=device) for a in (Q, K, V)]
    out = layer(*t)
    assert isinstance(out, torch.Tensor) and out.device.type == device
    assert rel_err(out.detach().cpu().numpy(), ref) < 1e-10


@pytest.mark.parametrize("name", ["linear_attention", "mesa", "deltanet", "softmax_attention", "ttt_mlp"])
def test_gradients_flow_through_the_layer(name):
    """d sum(Y * G) / dV by torch autograd equals central differences of the NumPy layer."""
    Q, K, V = _data(seed=1, B=1, T=6)
    G = np.random.default_rng(2).standard_normal(V.shape[:-1] + (3,))
    layer = RECIPES[name]()
    Vt = torch.as_tensor(V).requires_grad_(True)
    (layer(torch.as_tensor(Q), torch.as_tensor(K), Vt) * torch.as_tensor(G)).sum().backward()
    h = 1e-6
    num = np.zeros_like(V)
    for idx in np.ndindex(V.shape):
        Vp, Vm = V.copy(), V.copy()
        Vp[idx] += h
        Vm[idx] -= h
        num[idx] = (np.sum(layer(Q, K, Vp) * G) - np.sum(layer(Q, K, Vm) * G)) / (2 * h)
    assert rel_err(Vt.grad.numpy(), num) < 1e-7
