import pytest
import torch
from torch import nn

from engine.errors import EngineError
from engine.train.models import ARCHS, Head, LayeredNet, build_model, reset_parameters

SHAPES = [(28, 56, 1), (32, 64, 3)]
N_LAYERS = {"mlp": 5, "cnn": 5, "resnet18": 6}


def test_registry_names():
    assert set(ARCHS) == {"mlp", "cnn", "resnet18"}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_contract(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, shape, 10)
    assert isinstance(model, LayeredNet)
    assert isinstance(model.layers, nn.ModuleList)
    assert model.n_layers == len(model.layers) == N_LAYERS[arch]
    assert model.head is model.layers[-1]
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 10
    h, w, c = shape
    x = torch.randn(3, c, h, w)
    model.eval()
    out = model(x)
    assert out.shape == (3, 10)
    acts = model.activations(x)
    assert len(acts) == model.n_layers
    assert all(a.shape[0] == 3 for a in acts)
    assert torch.equal(acts[-1], out)
    # Each layer consumes the previous layer's output.
    for i in range(1, model.n_layers):
        assert torch.equal(model.layers[i](acts[i - 1]), acts[i])


def test_cnn_shapes_and_no_pooling():
    model = build_model("cnn", (28, 56, 1), 10)
    widths = [layer[0].out_channels for layer in model.layers[:-1]]
    assert widths == [32, 64, 64, 128]
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d))
                   for m in model.modules())
    assert model.head.pool is False
    assert model.head.in_features == 128 * 7 * 14
    acts = model.activations(torch.zeros(1, 1, 28, 56))
    assert acts[-2].shape == (1, 128, 7, 14)


def test_cnn_head_is_position_specific():
    torch.manual_seed(0)
    model = build_model("cnn", (28, 56, 1), 10).eval()
    x = torch.randn(1, 1, 28, 56)
    # The same image with its halves swapped: a pooled head is nearly invariant to this, ours not.
    swapped = torch.cat([x[..., 28:], x[..., :28]], dim=-1)
    assert not torch.allclose(model(x), model(swapped), atol=1e-3)


def test_cnn_global_pool_option():
    model = build_model("cnn", (28, 56, 1), 10, global_pool=True)
    assert model.head.pool is True and model.head.in_features == 128
    assert model(torch.zeros(2, 1, 28, 56)).shape == (2, 10)


def test_depth_and_width():
    mlp = build_model("mlp", (28, 56, 1), 7, depth=2, width=32)
    assert mlp.n_layers == 3 and mlp.head.in_features == 32 and mlp.head.out_features == 7
    cnn = build_model("cnn", (32, 64, 3), 10, depth=3, width=8)
    assert cnn.n_layers == 4
    assert [layer[0].out_channels for layer in cnn.layers[:-1]] == [8, 16, 16]
    assert cnn(torch.zeros(2, 3, 32, 64)).shape == (2, 10)


def test_resnet18_layout():
    model = build_model("resnet18", (28, 56, 1), 10)
    stem = model.layers[0][0]
    assert isinstance(stem, nn.Conv2d)
    assert stem.in_channels == 1 and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert isinstance(model.head, Head) and model.head.pool and model.head.in_features == 512


def test_spec_rebuilds():
    model = build_model("cnn", (28, 56, 1), 10, width=8)
    spec = dict(model.spec)
    again = build_model(spec.pop("arch"), tuple(spec.pop("input_shape")), spec.pop("n_classes"),
                        **spec)
    assert again.state_dict().keys() == model.state_dict().keys()


def test_unknown_arch():
    with pytest.raises(EngineError, match="mlp, cnn, resnet18"):
        build_model("vgg", (28, 56, 1), 10)


@pytest.mark.parametrize("kwargs", [
    {"input_shape": (28, 56)},
    {"input_shape": (28, 0, 1)},
    {"n_classes": 0},
    {"depth": 0},
    {"arch": "resnet18", "width": 8},
    {"arch": "mlp", "global_pool": True},
])
def test_bad_arguments(kwargs):
    args = {"arch": "cnn", "input_shape": (28, 56, 1), "n_classes": 10} | kwargs
    with pytest.raises(EngineError):
        build_model(args.pop("arch"), args.pop("input_shape"), args.pop("n_classes"), **args)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_reset_parameters_is_seeded_and_leaves_global_rng(arch):
    model = build_model(arch, (28, 56, 1), 10, width=8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)

    reset_parameters(model, seed=5)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [id(p) for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    reset_parameters(model, seed=5)
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    assert [id(p) for p in model.parameters()] == params_before
    reset_parameters(model, seed=6)
    assert not torch.equal(first[f"layers.{model.n_layers - 1}.weight"], model.head.weight)
    assert torch.equal(torch.rand(1), expected_next)


def test_reset_parameters_resets_batchnorm_stats():
    model = build_model("cnn", (28, 56, 1), 10, width=8)
    model.train()
    model(torch.randn(4, 1, 28, 56) * 3 + 1)
    bn = model.layers[0][1]
    assert bn.num_batches_tracked.item() == 1
    reset_parameters(model, seed=0)
    assert bn.num_batches_tracked.item() == 0
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_fresh_draws_do_not_depend_on_memory_format():
    """The initialisers fill tensors in memory order: a contiguous and a channels-last cnn once
    got different weights from one seed (conv layers of more than one input channel)."""
    from engine.train.models import reset_parameters
    models = [build_model("cnn", (28, 56, 1), 10) for _ in range(2)]
    models[1] = models[1].to(memory_format=torch.channels_last)
    for m in models:
        reset_parameters(m, 7)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), name
