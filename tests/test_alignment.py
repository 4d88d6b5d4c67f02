"""The pure-torch alignment module: level tokens, the gate, every ablation mode, every bad setting."""

from __future__ import annotations

import pytest
import torch

from aligngpt_plugin.core.alignment import AlignmentConfig, AlignmentModule, masked_mean

H = 16


def module(**kwargs) -> AlignmentModule:
    torch.manual_seed(0)
    return AlignmentModule(AlignmentConfig(**kwargs), hidden_size=H)


def inputs(batch=3, tokens=576):
    torch.manual_seed(1)
    return torch.randn(batch, tokens, H), torch.randn(batch, H)


def test_public_shapes_and_init():
    m = module()
    assert m.level_embeddings.shape == (8, H)
    assert m.gate[0].weight.shape == (256, 576) and m.gate[2].weight.shape == (7, 256)
    bound = (6 / (8 + H)) ** 0.5  # Xavier-uniform
    assert m.level_embeddings.abs().max() <= bound


def test_pretraining_token_is_the_level_embedding():
    m = module()
    out = m(levels=torch.tensor([0, 7, 3]))
    assert torch.equal(out.token, m.level_embeddings[[0, 7, 3]])
    assert out.gate_weights is None


@pytest.mark.parametrize("level", [-1, 8])
def test_level_out_of_range_is_named(level):
    with pytest.raises(ValueError, match=rf"\[{level}\].*0\.\.7"):
        module()(levels=torch.tensor([1, level]))


def test_gate_weights_are_a_distribution_per_sample():
    m = module()
    image, text = inputs()
    w = m.gate_weights(image, text)
    assert w.shape == (3, 7)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(3))
    assert not torch.allclose(w[0], w[1]), "different inputs should get different weights"


def test_gate_scores_are_dot_products_with_the_text_mean():
    m = module()
    image, text = inputs(batch=2)
    d = m.gate_scores(image, text)
    assert torch.allclose(d[1, 5], image[1, 5] @ text[1])


def test_adaptive_token_is_weighted_local_plus_global():
    m = module()
    image, text = inputs()
    out = m(image_tokens=image, text_mean=text)
    e = m.level_embeddings
    assert torch.allclose(out.token, out.gate_weights @ e[:7] + e[7])


@pytest.mark.parametrize("mode, expected", [
    ("local", lambda w, e: w @ e[:7]),
    ("global", lambda w, e: e[7].expand(3, -1)),
    ("no_gate", lambda w, e: (e[:7].mean(0) + e[7]).expand(3, -1)),
    ("fixed_level", lambda w, e: e[2].expand(3, -1)),
])
def test_ablation_modes(mode, expected):
    m = module(mode=mode, fixed_level=2 if mode == "fixed_level" else None)
    image, text = inputs()
    out = m(image_tokens=image, text_mean=text)
    w = m.gate_weights(image, text)
    assert torch.allclose(out.token, expected(w, m.level_embeddings))
    assert (out.gate_weights is not None) == (mode == "local")


def test_fixed_gate_refuses_other_token_counts_with_the_fix():
    with pytest.raises(ValueError, match=r"576 image tokens.*got 2880.*pooled"):
        module()(image_tokens=torch.randn(1, 2880, H), text_mean=torch.randn(1, H))


@pytest.mark.parametrize("tokens", [576, 144, 2880, 577])
def test_pooled_gate_takes_any_token_count(tokens):
    m = module(gate_input="pooled")
    image, text = inputs(batch=2, tokens=tokens)
    w = m.gate_weights(image, text)
    assert w.shape == (2, 7) and torch.allclose(w.sum(-1), torch.ones(2))


def test_pooled_gate_equals_fixed_gate_at_576_tokens():
    image, text = inputs()
    assert torch.equal(module(gate_input="pooled").gate_weights(image, text),
                       module().gate_weights(image, text))


def test_gradients_in_each_stage():
    m = module()
    m(levels=torch.tensor([1, 1])).token.sum().backward()
    grad = m.level_embeddings.grad
    assert grad[1].abs().sum() > 0 and grad[[0, 2, 3, 4, 5, 6, 7]].abs().sum() == 0
    assert all(p.grad is None for p in m.gate.parameters()), "the gate does not run in pre-training"

    m.zero_grad(set_to_none=True)
    m.level_embeddings.requires_grad_(False)  # instruction tuning freezes E
    image, text = inputs()
    m(image_tokens=image, text_mean=text).token.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.gate.parameters())
    assert m.level_embeddings.grad is None


def test_masked_mean_ignores_masked_positions():
    x = torch.tensor([[[1.0, 1.0], [3.0, 5.0], [100.0, 100.0]]])
    assert torch.equal(masked_mean(x, torch.tensor([[True, True, False]])), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(masked_mean(x, torch.tensor([[False, False, False]])), torch.zeros(1, 2))


@pytest.mark.parametrize("kwargs, error", [
    ({"num_levels": 1}, "at least 2"),
    ({"mode": "mixture"}, "choose one of adaptive"),
    ({"gate_input": "any"}, "gate_input='any'"),
    ({"gate_text": "answer"}, "gate_text='answer'"),
    ({"mode": "fixed_level"}, "needs fixed_level in 0..7"),
    ({"mode": "fixed_level", "fixed_level": 8}, "needs fixed_level in 0..7"),
    ({"fixed_level": 3}, "only used with mode='fixed_level'"),
    ({"gate_tokens": 0}, "must be >= 1"),
])
def test_bad_settings_are_refused(kwargs, error):
    with pytest.raises(ValueError, match=error):
        AlignmentConfig(**kwargs)


def test_config_round_trip_and_unknown_keys():
    config = AlignmentConfig(num_levels=4, mode="global", gate_input="pooled", gate_tokens=64)
    assert AlignmentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown alignment settings.*'levels'"):
        AlignmentConfig.from_dict({"levels": 8})


def test_building_and_resetting_the_module_leave_the_global_rng_where_it_was():
    """A model that builds the module before its projector (AlignGPT in LLaVA) must draw the projector a
    plain model draws for the same seed: the module may not advance the global RNG."""
    torch.manual_seed(5)
    state = torch.get_rng_state()
    m = AlignmentModule(AlignmentConfig(), hidden_size=H)
    assert torch.equal(torch.get_rng_state(), state)
    # nor are the module's numbers the ones the global stream draws next (a plain fork would give it those:
    # the projector's, drawn by the same law)
    assert not torch.equal(torch.nn.Linear(576, 256).weight, m.gate[0].weight)
    torch.set_rng_state(state)
    m.reset_parameters()
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(torch.nn.Linear(576, 256).weight, m.gate[0].weight)


def test_private_init_follows_torchs_init_laws_and_the_global_seed():
    """Xavier-uniform levels, and nn.Linear's default for the gate (weights and biases uniform in
    +-1/sqrt(fan_in): torch's documentation); the same global seed gives the same values, another seed
    others, and reset_parameters redraws the constructor's values."""
    def draw(seed: int) -> AlignmentModule:
        torch.manual_seed(seed)
        return AlignmentModule(AlignmentConfig(), hidden_size=64)

    m = draw(0)
    for tensor, bound in ((m.level_embeddings, (6 / (8 + 64)) ** 0.5), (m.gate[0].weight, 576 ** -0.5),
                          (m.gate[0].bias, 576 ** -0.5), (m.gate[2].weight, 256 ** -0.5)):
        values = tensor.detach().flatten()
        assert values.abs().max() <= bound
        # a uniform on [-b, b] has standard deviation b / sqrt(3); 147k gate weights pin it to < 1%
        tolerance = 0.01 if values.numel() > 10_000 else 0.2
        assert values.std().item() == pytest.approx(bound / 3 ** 0.5, rel=tolerance)
    same, other = draw(0), draw(1)
    built = {k: v.clone() for k, v in m.state_dict().items()}
    for key, value in built.items():
        assert torch.equal(same.state_dict()[key], value)
        assert not torch.equal(other.state_dict()[key], value)
    torch.manual_seed(0)
    m.reset_parameters()
    for key, value in built.items():
        assert torch.equal(m.state_dict()[key], value), key


def test_the_gate_layers_are_marked_for_models_weight_init():
    """transformers' `_init_weights` visits the gate's Linear layers before the module: a model skips them
    (`is_alignment_layer`) and lets `reset_parameters` draw them."""
    from aligngpt_plugin.core.alignment import is_alignment_layer

    m = module()
    assert all(is_alignment_layer(layer) for layer in m.gate.modules())
    assert not is_alignment_layer(m) and not is_alignment_layer(torch.nn.Linear(2, 2))


def test_a_module_built_on_the_meta_device_draws_nothing():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    with torch.device("meta"):
        m = AlignmentModule(AlignmentConfig(), hidden_size=H)
    m.reset_parameters()
    assert m.level_embeddings.is_meta and torch.equal(torch.get_rng_state(), state)
