"""Self-describing model files: one call rebuilds the exact model (config, scale, classes,
feature settings), and every unusable file is one CheckpointError naming it."""
from __future__ import annotations

import pytest
import torch

from elasticast_kernels import __version__
from elasticast_kernels.models import ElasticAST
from elasticast_kernels.saved_model import CARD_KEY, FeatureSettings, ModelCard, load_model, model_card, save_model
from elasticast_kernels.serialization import CheckpointError
from elasticast_kernels.training import save_checkpoint

CLASSES = ("yes", "no", "up")


def small_model(**overrides) -> ElasticAST:
    torch.manual_seed(0)
    kwargs = dict(sample_size=(32, 64), patch_size=16, num_classes=3, dim=32, depth=1, heads=2, channels=1,
                  softmax_scale=0.25, attention_backend="torch")
    return ElasticAST(**{**kwargs, **overrides}).eval()


def specs():
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(1, 32, t, generator=generator) for t in (16, 48, 32)]


def test_round_trip_rebuilds_the_exact_model(tmp_path):
    model = small_model()
    features = FeatureSettings(sample_rate=8000, normalize=(-4.0, 9.0), quality=2)
    card = save_model(tmp_path / "m.pt", model, classes=CLASSES, features=features)
    loaded, loaded_card = load_model(tmp_path / "m.pt")
    assert loaded_card == card and loaded_card.version == __version__
    assert loaded_card.features.normalize == (-4.0, 9.0) and loaded_card.features.quality == 2.0
    assert loaded.softmax_scale == 0.25 and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(specs()), model(specs()), rtol=0, atol=0)


def test_the_scale_is_part_of_the_card(tmp_path):
    save_model(tmp_path / "m.pt", small_model(), classes=CLASSES)
    by_hand = small_model(softmax_scale=1.0)  # what a user rebuilding it from the README would get
    loaded, _ = load_model(tmp_path / "m.pt")
    by_hand.load_state_dict(loaded.state_dict())
    with torch.no_grad():
        assert not torch.allclose(by_hand(specs()), loaded(specs()))


def test_training_checkpoint_with_a_card_loads(tmp_path):
    model = small_model()
    card = model_card(model, classes=CLASSES, features=FeatureSettings(normalize=(1.0, 2.0)))
    save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "step": 3, CARD_KEY: card.to_dict()})
    loaded, loaded_card = load_model(tmp_path / "last.pt", attention_backend="auto")
    assert loaded_card.classes == CLASSES and loaded.attention_backend == "auto"
    with torch.no_grad():
        torch.testing.assert_close(loaded(specs()), model(specs()), rtol=0, atol=0)


def test_bare_state_dicts_are_refused_with_a_way_out(tmp_path):
    torch.save(small_model().state_dict(), tmp_path / "published.pth")
    with pytest.raises(CheckpointError, match="published.pth carries no model card.*save_model"):
        load_model(tmp_path / "published.pth")
    model = small_model()
    model.load_state_dict(torch.load(tmp_path / "published.pth", weights_only=True), strict=True)  # still as today


def test_cards_that_do_not_fit_are_refused(tmp_path):
    model = small_model()
    card = model_card(model, classes=CLASSES).to_dict()
    wrong_shape = {**card, "config": {**card["config"], "dim": 64}}
    save_checkpoint(tmp_path / "a.pt", {"model": model.state_dict(), CARD_KEY: wrong_shape})
    with pytest.raises(CheckpointError, match="a.pt: the weights do not fit"):
        load_model(tmp_path / "a.pt")
    bad_config = {**card, "config": {**card["config"], "heads": 3}}
    save_checkpoint(tmp_path / "b.pt", {"model": model.state_dict(), CARD_KEY: bad_config})
    with pytest.raises(CheckpointError, match="b.pt: the model card's config does not build"):
        load_model(tmp_path / "b.pt")
    for name, broken in {"c": {**card, "architecture": "GPT"}, "d": {**card, "classes": ["x"]},
                         "e": {**card, "features": {"sample_rate": -1}}, "f": "card", "g": {"config": {}}}.items():
        save_checkpoint(tmp_path / f"{name}.pt", {"model": model.state_dict(), CARD_KEY: broken})
        with pytest.raises(CheckpointError, match=f"{name}.pt: invalid model card"):
            load_model(tmp_path / f"{name}.pt")
    save_checkpoint(tmp_path / "h.pt", {"model": [1, 2], CARD_KEY: card})
    with pytest.raises(CheckpointError, match="h.pt: the weights are missing"):
        load_model(tmp_path / "h.pt")


def test_corrupt_files(tmp_path):
    save_model(tmp_path / "m.pt", small_model(), classes=CLASSES)
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_model(tmp_path / "cut.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["state_dict"]["head.bias"] += 1  # content no longer matches the stored digest
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="edited.pt is corrupt"):
        load_model(tmp_path / "edited.pt")
    del payload["digest"]
    torch.save(payload, tmp_path / "unsigned.pt")
    with pytest.raises(CheckpointError, match="unsigned.pt has no content digest"):
        load_model(tmp_path / "unsigned.pt")


@pytest.mark.parametrize("values, error, message", [
    ({"sample_rate": 0}, ValueError, "sample_rate must be >= 1, got 0"),
    ({"sample_rate": 16000.0}, TypeError, "sample_rate must be an int, got float"),
    ({"quality": float("nan")}, ValueError, "quality must be finite"),
    ({"frame_shift_ms": 0}, ValueError, "frame_shift_ms must be > 0"),
    ({"normalize": (0.0, 0.0)}, ValueError, "finite std > 0"),
    ({"normalize": "ab"}, ValueError, "normalize must be None or"),
    ({"num_mel_bins": True}, TypeError, "num_mel_bins must be an int, got bool"),
])
def test_feature_settings_are_checked(values, error, message):
    with pytest.raises(error, match=message):
        FeatureSettings(**values)


def test_card_checks():
    with pytest.raises(ValueError, match="3 class names for a model with num_classes=2"):
        ModelCard("ElasticAST", {"num_classes": 2}, ("a", "b", "c"))
    with pytest.raises(ValueError, match="must not repeat"):
        ModelCard("ElasticAST", {}, ("a", "a"))
    with pytest.raises(ValueError, match="unknown feature settings"):
        FeatureSettings.from_dict({"rate": 1})
    with pytest.raises(TypeError, match="cannot save a Linear"):
        save_model("unused.pt", torch.nn.Linear(2, 2))
