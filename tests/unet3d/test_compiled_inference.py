"""Compiled inference (issue: whole-volume inference at the CPU's limit) and precision choice."""

import keras
import numpy as np
import pytest

from unet3d.config import ModelConfig
from unet3d.inference.predictor import WindowPredictor
from unet3d.models.forward import eager_predict_fn, keras_predict_fn
from unet3d.models.unet import build_unet3d
from unet3d.precision import cpu_flags, dtype_policy, resolve_precision
from unet3d_base.errors import InputError

TINY = ModelConfig(base_filters=4, depth=3, dropout=0.3)


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(7)
    return build_unet3d(TINY)


def test_compiled_equals_eager_and_one_graph_serves_every_size(tiny_model):
    compiled = keras_predict_fn(tiny_model)
    eager = eager_predict_fn(tiny_model)
    rng = np.random.default_rng(0)
    for shape in [(1, 16, 24, 8, 4), (1, 8, 8, 8, 4), (1, 24, 16, 16, 4)]:
        x = rng.normal(size=shape).astype(np.float32)
        out = compiled(x)
        assert out.dtype == np.float32 and out.shape == shape[:4] + (3,)
        np.testing.assert_allclose(out, eager(x), atol=1e-5)
    if keras.backend.backend() == "tensorflow":
        # three volume sizes, one batch size: one traced graph, no retracing
        assert compiled.tracing_count() == 1


def test_dropout_is_off_in_compiled_inference(tiny_model):
    x = np.random.default_rng(1).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    compiled = keras_predict_fn(tiny_model)
    np.testing.assert_array_equal(compiled(x), compiled(x))


def test_whole_and_sliding_agree_where_norm_statistics_coincide(tiny_model):
    # one window covering the whole (padded) volume: instance norm sees the same voxels,
    # so the Gaussian-weighted sliding path must reproduce the whole-volume pass
    image = np.random.default_rng(2).normal(size=(16, 24, 16, 4)).astype(np.float32)
    fn = keras_predict_fn(tiny_model)
    whole = WindowPredictor(fn, stride=4, patch_size=(16, 24, 16), mode="whole")(image)
    sliding = WindowPredictor(fn, stride=4, patch_size=(16, 24, 16), mode="sliding")(image)
    np.testing.assert_allclose(sliding, whole, atol=1e-5)
    np.testing.assert_allclose(whole, eager_predict_fn(tiny_model)(image[None])[0], atol=1e-5)


@pytest.mark.parametrize(("requested", "flags", "gpu", "expected"), [
    ("auto", {"avx2", "avx512f", "avx512_vnni"}, False, "fp32"),  # AVX-512 without bf16
    ("auto", {"avx2", "fma"}, False, "fp32"),
    ("auto", {"avx512f", "avx512_bf16"}, False, "bf16"),
    ("auto", {"amx_tile", "amx_bf16"}, False, "bf16"),
    ("auto", {"avx2"}, True, "bf16"),  # a GPU computes bf16 natively
    ("fp32", {"avx512_bf16"}, True, "fp32"),
    ("bf16", {"avx512_bf16"}, False, "bf16"),
])
def test_precision_decided_from_injected_cpu_flags(requested, flags, gpu, expected):
    assert resolve_precision(requested, flags=flags, gpu=gpu) == expected


def test_bf16_refused_where_it_would_be_emulated():
    with pytest.raises(InputError, match=r"--precision bf16: .*avx512_bf16 / amx_bf16.*use fp32"):
        resolve_precision("bf16", flags={"avx2", "avx512f"}, gpu=False)
    with pytest.raises(InputError, match="must be one of auto, fp32, bf16"):
        resolve_precision("fp16", flags=set(), gpu=False)


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\n"
                       "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert dtype_policy("bf16") == "mixed_bfloat16" and dtype_policy("fp32") == "float32"


def test_a_model_is_rebuilt_in_the_requested_precision(tiny_model):
    from unet3d.artifacts import with_precision

    same = with_precision(tiny_model, TINY, "fp32")
    assert same is tiny_model
    bf16 = with_precision(tiny_model, TINY, "bf16")
    assert bf16.dtype_policy.name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    for a, b in zip(tiny_model.get_weights(), bf16.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(3).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    out = keras_predict_fn(bf16)(x)
    assert out.dtype == np.float32
    # bf16 keeps 8 bits of mantissa: probabilities agree to a few 1e-3, at worst a few 1e-2
    difference = np.abs(out - keras_predict_fn(tiny_model)(x))
    assert difference.mean() < 5e-3 and difference.max() < 8e-2


@pytest.mark.parametrize(("saved_in", "loaded_under", "wanted"), [
    ("bf16", "fp32", "fp32"),  # model-level policy float32, layers still bf16
    ("fp32", "bf16", "bf16"),  # model-level policy mixed_bfloat16, layers float32
])
def test_precision_is_read_from_the_layers_not_the_model(tmp_path, saved_in, loaded_under,
                                                         wanted):
    """A ``.keras`` file loads its layers with the policy they were saved with, whatever
    the model-level policy reads; with_precision must rebuild such a model."""
    from unet3d.artifacts import with_precision
    from unet3d.precision import policy_scope

    config = ModelConfig(base_filters=4, depth=2, segmentation_levels=2)
    keras.utils.set_random_seed(11)
    with policy_scope(saved_in):
        original = build_unet3d(config)
    original.save(tmp_path / "m.keras")
    with policy_scope(loaded_under):
        loaded = keras.models.load_model(tmp_path / "m.keras")
    convs = [layer for layer in loaded.layers if isinstance(layer, keras.layers.Conv3D)]
    saved_dtype = keras.DTypePolicy(dtype_policy(saved_in)).compute_dtype
    wanted_dtype = keras.DTypePolicy(dtype_policy(wanted)).compute_dtype
    # the case under test: the model-level policy names the wanted precision, the layers not
    assert loaded.dtype_policy.name == dtype_policy(wanted)
    assert convs and all(layer.compute_dtype == saved_dtype for layer in convs)

    rebuilt = with_precision(loaded, config, wanted)
    assert rebuilt is not loaded
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    weighted = [layer for layer in rebuilt.layers if layer.weights]
    assert weighted and all(layer.dtype_policy.compute_dtype == wanted_dtype
                            for layer in weighted)
    for a, b in zip(original.get_weights(), rebuilt.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert with_precision(rebuilt, config, wanted) is rebuilt  # now it computes as asked
    x = np.random.default_rng(5).normal(size=(1, 8, 8, 8, 4)).astype(np.float32)
    out = keras_predict_fn(rebuilt)(x)
    assert out.dtype == np.float32
    # one side computes in bf16 (8 bits of mantissa): probabilities agree to a few 1e-3
    difference = np.abs(out - keras_predict_fn(original)(x))
    assert difference.mean() < 5e-3 and difference.max() < 8e-2
