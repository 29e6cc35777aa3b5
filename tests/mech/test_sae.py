"""Sparse autoencoders: the module and its files, training on data with a known sparse structure, dead
features resampled, attaching and splicing at a hook point, reading a feature, and the AUROC helper."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import clipx
import clipx.assets
from clipx.eval.metrics import auroc
from clipx.files import DIGEST, read_safetensors, save_safetensors
from clipx.mech.sae.autoencoder import SAEConfig, SparseAutoencoder
from clipx.mech.sae.attach import attach_sae, splice_effect
from clipx.mech.sae.features import feature_activations, nearest_captions, readout_directions, top_patches
from clipx.mech.sae.training import fit, new_sae
from damage import fill_disk, flip_bit, retype, swap, truncate
from floats import assert_float32_close
from paths import ROOT

HOOK = "vision.blocks.1.hook_resid_post"  # the tiny checkpoint's last block: width 48, 1 + 16 tokens


def sparse_data(n=8000, d=32, n_directions=16, active=3, seed=0):
    """Tokens built as nonnegative combinations of ~`active` of `n_directions` random unit directions, plus
    a constant offset: (activations [n, d], directions [n_directions, d])."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(n_directions, d, generator=g), dim=1)
    on = torch.rand(n, n_directions, generator=g) < active / n_directions
    coefficients = on * (0.5 + 2 * torch.rand(n, n_directions, generator=g))
    return coefficients @ directions + 0.3, directions


def small_sae(d_in=48, d_sae=64, hook=HOOK, **kwargs):
    torch.manual_seed(0)
    return SparseAutoencoder(SAEConfig(hook, d_in, d_sae, **({"k": 4} | kwargs)))


@pytest.fixture(scope="module")
def pixel_values():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- the module -----------------------------------------------------------------------------------
def test_encode_decode_shapes_and_topk_keeps_exactly_k():
    sae = small_sae(k=5)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: TopK keeps exactly k
    x = torch.randn(2, 7, 48)
    reconstruction, features = sae(x)
    assert features.shape == (2, 7, 64) and reconstruction.shape == x.shape
    assert ((features != 0).sum(-1) == 5).all()
    pre = sae.pre_activations(x)
    assert torch.equal(features.topk(5).indices.sort().values, pre.topk(5).indices.sort().values)


def test_relu_features_are_nonnegative_and_decoder_rows_unit_norm():
    sae = small_sae(activation="relu", k=None, l1=1e-3)
    features = sae.encode(torch.randn(10, 48))
    assert (features >= 0).all() and (features == 0).any()
    assert_float32_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_tied_decoder_is_the_encoder():
    sae = small_sae(tied=True)
    assert sae.W_enc is None and "W_enc" not in dict(sae.named_parameters())
    with torch.no_grad():
        sae.W_dec[3] = 0
    assert (sae.encoder_weight[:, 3] == 0).all()


def test_config_refuses_inconsistent_sparsity():
    with pytest.raises(ValueError, match="needs an int k"):
        SAEConfig(HOOK, 48, 64, activation="topk", k=None)
    with pytest.raises(ValueError, match="L1 coefficient l1 must be a number"):
        SAEConfig(HOOK, 48, 64, activation="relu", l1=-1.0)
    # an SAE trained elsewhere may not say its L1 coefficient: it runs, but fit cannot train it
    untrained_l1 = SparseAutoencoder(SAEConfig(HOOK, 48, 64, activation="relu"))
    with pytest.raises(ValueError, match="fit trains TopK SAEs and ReLU SAEs with an L1 coefficient"):
        fit(untrained_l1, torch.randn(10, 48), steps=1, progress=False)
    with pytest.raises(ValueError, match="exactly one of k"):
        new_sae(torch.randn(10, 4), "x", 8, k=2, l1=0.1)


# --- training --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [{"k": 4}, {"l1": 3e-3}], ids=["topk", "relu-l1"])
def test_training_recovers_known_sparse_directions(sparsity):
    activations, directions = sparse_data()
    sae = new_sae(activations, "synthetic", 64, **sparsity)
    stats = fit(sae, activations, steps=500, lr=3e-3, batch_size=256, progress=False)
    assert stats.explained_variance > 0.95
    assert stats.l0 <= 4 if "k" in sparsity else stats.l0 < 12
    # every true direction has a decoder row pointing along it
    assert (directions @ sae.W_dec.detach().T).max(1).values.min() > 0.9


def test_resampling_revives_dead_features():
    activations, _ = sparse_data()
    runs = {}
    for resample_every in (None, 100):
        sae = new_sae(activations, "synthetic", 32, k=4)
        with torch.no_grad():
            sae.b_enc[8:] = -1000.0  # 24 of 32 features can never fire: 8 left for 16 directions
        runs[resample_every] = fit(sae, activations, steps=300, lr=3e-3, batch_size=256,
                                   resample_every=resample_every, progress=False)
    assert runs[None].dead_fraction == 0.75 and runs[None].resampled == 0
    assert runs[100].resampled >= 24 and runs[100].dead_fraction < 0.1
    assert runs[100].explained_variance > runs[None].explained_variance


def test_train_sae_on_a_model(eager_model, pixel_values):
    sae, stats = clipx.train_sae(eager_model, HOOK, pixel_values, d_sae=32, k=4, steps=20, batch_size=16,
                                 progress=False)
    assert sae.config.hook_name == HOOK and sae.config.d_in == 48 and sae.config.positions == "patches"
    assert stats.n_tokens == 3 * 16 and 0 < stats.l0 <= 4
    images = [Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)) for i in range(3)]
    _, all_positions = clipx.train_sae(eager_model, HOOK, images, d_sae=32, k=4, steps=2, positions="all",
                                       progress=False)
    assert all_positions.n_tokens == 3 * 17


def test_train_sae_names_a_bad_hook(eager_model, pixel_values):
    with pytest.raises(KeyError, match="vision.blocks.9.hook_resid_post"):
        clipx.train_sae(eager_model, "vision.blocks.9.hook_resid_post", pixel_values, d_sae=8, k=2, steps=1)
    with pytest.raises(ValueError, match="text.blocks.0.hook_resid_post"):
        clipx.train_sae(eager_model, "text.blocks.0.hook_resid_post", pixel_values, d_sae=8, k=2, steps=1)


def test_train_sae_and_attach_refuse_no_images_and_bad_positions(eager_model, pixel_values):
    with pytest.raises(ValueError, match="no images to train on"):
        clipx.train_sae(eager_model, HOOK, [], d_sae=8, k=2, steps=1)
    with pytest.raises(ValueError, match="positions must be 'patches' or 'all', got 'class'"):
        clipx.train_sae(eager_model, HOOK, pixel_values, d_sae=8, k=2, steps=1, positions="class")
    with pytest.raises(ValueError, match="positions must be 'patches' or 'all', got 'class'"), \
            attach_sae(eager_model, small_sae(), positions="class"):
        pass
    assert not eager_model.hook_point(HOOK).active


# --- files -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True])
def test_save_load_round_trip_is_bit_identical(tmp_path, tied):
    sae = small_sae(tied=tied, input_scale=0.37)
    with torch.no_grad():
        sae.b_dec.normal_()
    loaded = SparseAutoencoder.load(sae.save(tmp_path))
    assert loaded.config == sae.config
    for (name, a), (_, b) in zip(sae.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a, b), name
    x = torch.randn(5, 48)
    assert torch.equal(loaded(x)[0], sae(x)[0])


def tamper_config(folder: Path, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def replace_weights(folder: Path, tensors: dict) -> None:
    """New weights, with a digest, and config.json naming it: a tamperer careful enough to pass the digests."""
    tamper_config(folder, lambda c: c.update(weights_xxh3_128=save_safetensors(tensors, folder / "sae.safetensors")))


@pytest.mark.parametrize("tamper, message", [
    (lambda f: (f / "sae.safetensors").unlink(), "no sae.safetensors"),
    (lambda f: (f / "config.json").unlink(), "no config.json"),
    (lambda f: tamper_config(f, lambda c: c.pop("d_sae")), "missing config field.*d_sae"),
    (lambda f: tamper_config(f, lambda c: c.update(hook="x")), "unknown config field.*hook"),
    (lambda f: tamper_config(f, lambda c: c.update(d_sae=65)), "'W_dec' has shape \\(64, 48\\).*d_sae=65"),
    (lambda f: tamper_config(f, lambda c: c.update(k=0)), "config.json.*k in 1..d_sae"),
    (lambda f: tamper_config(f, lambda c: c.update(tied=True)), "holds tensor 'W_enc'"),
    (lambda f: replace_weights(f, {k: v for k, v in load_file(f / "sae.safetensors").items() if k != "b_enc"}),
     "lacks tensor 'b_enc'"),
    (lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
    (lambda f: tamper_config(f, lambda c: c.update(tied="no")), "tied a bool"),
], ids=["no-weights", "no-config", "missing-field", "unknown-field", "wrong-shape", "bad-k", "tied-but-W_enc",
        "missing-tensor", "bad-json", "tied-not-bool"])
def test_tampered_files_fail_loudly(tmp_path, tamper, message):
    small_sae().save(tmp_path)
    tamper(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        SparseAutoencoder.load(tmp_path)


@pytest.mark.parametrize("damage", [lambda p: flip_bit(p, "b_dec", bit=29), lambda p: retype(p, "b_enc", "I32"),
                                    lambda p: swap(p, "W_enc", "W_dec"), truncate],
                         ids=["bit-flipped", "retyped", "swapped", "truncated"])
def test_damaged_weights_are_refused_naming_them(tmp_path, damage):
    small_sae().save(tmp_path)
    damage(tmp_path / "sae.safetensors")
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'sae.safetensors'))} is (damaged|not a readable)"):
        SparseAutoencoder.load(tmp_path)


def test_weights_of_another_save_are_refused(tmp_path):
    """As a save stopped between its two files leaves them (the new weights, the old config.json), or as a
    user copying one file of another SAE makes them."""
    small_sae().save(tmp_path / "a")
    other = small_sae()
    with torch.no_grad():
        other.b_dec.add_(1)
    other.save(tmp_path / "b")
    os.replace(tmp_path / "b" / "sae.safetensors", tmp_path / "a" / "sae.safetensors")
    with pytest.raises(ValueError, match=f"{tmp_path / 'a' / 'sae.safetensors'} is not the file "
                                         f"{tmp_path / 'a' / 'config.json'} was saved with"):
        SparseAutoencoder.load(tmp_path / "a")


def test_a_save_interrupted_before_its_config_leaves_a_folder_that_is_refused(tmp_path, monkeypatch):
    import clipx.mech.sae.autoencoder as module

    small_sae().save(tmp_path)
    other = small_sae(k=5)
    with torch.no_grad():
        other.b_dec.add_(1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(module, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "sae.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["k"] == 4  # the old one, whole
    with pytest.raises(ValueError, match="is not the file .*config.json was saved with"):
        SparseAutoencoder.load(tmp_path)


def test_a_full_disk_is_an_oserror_naming_the_file_and_the_saved_sae_stays(tmp_path, monkeypatch):
    sae = small_sae()
    sae.save(tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    fill_disk(monkeypatch, after=50)
    with pytest.raises(OSError, match=f"^\\[Errno 28\\] No space left on device: '{tmp_path / 'sae.safetensors'}'$"):
        small_sae(k=5).save(tmp_path)
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == before
    monkeypatch.undo()
    assert SparseAutoencoder.load(tmp_path).config == sae.config


def test_both_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o027)
    try:
        small_sae().save(tmp_path)
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "config.json": 0o640, "sae.safetensors": 0o640}


def test_a_folder_saved_before_digests_still_loads(tmp_path):
    sae = small_sae(input_scale=0.5)
    sae.save(tmp_path)
    tensors, metadata = read_safetensors(tmp_path / "sae.safetensors")
    assert DIGEST in metadata
    save_file(tensors, tmp_path / "sae.safetensors")
    tamper_config(tmp_path, lambda c: c.pop("weights_xxh3_128"))
    loaded = SparseAutoencoder.load(tmp_path)
    assert loaded.config == sae.config and torch.equal(loaded.W_dec, sae.W_dec)


# --- attaching -------------------------------------------------------------------------------------
def test_attach_records_the_features_of_the_recorded_activation(eager_model, pixel_values):
    sae = small_sae()
    with torch.no_grad(), eager_model.recording(HOOK) as cache, attach_sae(eager_model, sae) as attached:
        plain = eager_model.encode_image(pixel_values)
    assert attached.features.shape == (3, 17, 64)
    assert torch.equal(attached.features, sae.encode(cache[HOOK]))
    with torch.no_grad():
        assert torch.equal(eager_model.encode_image(pixel_values), plain)  # detached on exit; recording changed nothing


def test_splice_replaces_the_activation_by_the_reconstruction(eager_model, pixel_values):
    """Against a forward with the activation replaced by hand, and an identity SAE that changes nothing."""
    sae = small_sae(d_sae=48, input_scale=2.0, k=48)
    enc = eager_model.tokenize(["a red circle", "a blue square"])
    inputs = dict(pixel_values=pixel_values, input_ids=enc.input_ids, attention_mask=enc.attention_mask)
    with torch.no_grad():
        with eager_model.recording(HOOK) as cache:
            eager_model(**inputs)
        x = cache[HOOK]
        by_hand = x.clone()
        by_hand[:, 1:] = sae(x[:, 1:])[0]
        with eager_model.hooks(fwd_hooks=[(HOOK, lambda a, hook: by_hand)]):
            expected = eager_model(**inputs).logits_per_image
        with attach_sae(eager_model, sae, splice=True):
            spliced = eager_model(**inputs).logits_per_image
        assert torch.equal(spliced, expected)
        # the identity: decoder rows the basis, features the coordinates (all kept, all positive after b_dec)
        sae.W_dec.copy_(torch.eye(48))
        sae.W_enc.copy_(torch.eye(48))
        sae.b_dec.copy_(x.reshape(-1, 48).min(0).values * 2 - 1)
        effect = splice_effect(eager_model, sae, pixel_values, ["a red circle", "a blue square"], positions="all")
    assert_float32_close(effect.spliced, effect.clean)
    assert effect.agreement == 1.0


def test_attach_names_the_hook_when_widths_differ(eager_model, pixel_values):
    with pytest.raises(ValueError, match=r"128-wide.*'vision.blocks.1.hook_resid_post'.*48-wide"):
        with attach_sae(eager_model, small_sae(d_in=128)):
            eager_model.encode_image(pixel_values)
    with pytest.raises(KeyError, match="vision.blocks.7.hook_resid_post"):
        with attach_sae(eager_model, small_sae(hook="vision.blocks.7.hook_resid_post")):
            pass
    assert not eager_model.hook_point(HOOK).active


# --- reading a feature -----------------------------------------------------------------------------
def test_top_patches_and_nearest_captions(eager_model, pixel_values):
    sae = small_sae()
    acts = feature_activations(eager_model, sae, pixel_values)
    assert acts.shape == (3, 4, 4, 64)
    feature = int(acts.flatten(0, 2).max(0).values.argmax())
    top = top_patches(acts, feature, k=5)
    assert top[0].activation == acts[..., feature].max().item()
    assert [t.activation for t in top] == sorted((t.activation for t in top), reverse=True)
    assert all(acts[t.image, t.row, t.col, feature] == t.activation for t in top)
    captions = ["a red circle", "a blue square", "a green star"]
    near = nearest_captions(eager_model, sae, feature, captions, k=2)
    direction = readout_directions(eager_model, sae)[feature]
    with torch.no_grad():
        text = eager_model.encode_text(**{k: v for k, v in vars(eager_model.tokenize(captions)).items()
                                          if k in ("input_ids", "attention_mask")})
    cosines = torch.nn.functional.cosine_similarity(direction[None], text)
    assert [c for c, _ in near] == [captions[i] for i in cosines.argsort(descending=True)[:2]]
    assert_float32_close(torch.tensor([v for _, v in near]), cosines.sort(descending=True).values[:2])


def test_feature_view_builds_and_follows_the_slider(eager_model, pixel_values):
    from clipx.views import FeatureView

    sae = small_sae()
    view = FeatureView(eager_model, sae, pixel_values, captions=["a red circle", "a blue square"])
    first = (bytes(view.picture.value), view.panel.value)
    assert "a red circle" in view.panel.value and "top patches" in view.panel.value
    busiest = int(view.activations.flatten(0, 2).max(0).values.argmax())
    view.feature.value = busiest if busiest != view.feature.value else busiest + 1
    assert (bytes(view.picture.value), view.panel.value) != first
    before = bytes(view.picture.value)
    view.image_choice.value = 2
    assert bytes(view.picture.value) != before
    assert repr(view) == "FeatureView(64 features x 3 images)"
    assert FeatureView(eager_model, sae, pixel_values).panel.value  # no captions: no nearest-captions list


# --- AUROC -----------------------------------------------------------------------------------------
def test_auroc_against_hand_computed_values():
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    # positives 0.35, 0.8, 0.5 against negatives 0.1, 0.4, 0.5: pairs won 1+0+0 (0.35), 3 (0.8), 2 + a tie (0.5)
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8, 0.5, 0.5]), labels).item() == pytest.approx((1 + 3 + 2.5) / 9)
    constant = auroc(torch.zeros(6, 2), labels)  # all tied: chance
    assert torch.equal(constant, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert auroc(labels.float(), labels).item() == 1.0 and auroc(-labels.float(), labels).item() == 0.0
    with pytest.raises(ValueError, match="positives and negatives"):
        auroc(torch.rand(3), torch.ones(3))


# --- the shipped SAE -------------------------------------------------------------------------------
def test_shipped_sae_loads_by_name():
    sae = SparseAutoencoder.load("demo-sae")
    assert sae.config.hook_name == "vision.blocks.3.hook_resid_post" and sae.config.d_in == 128


def test_shipped_sae_concept_features_on_fresh_scenes():
    """The concept features recorded in the asset's concepts.json, re-scored on scenes that neither the SAE
    nor the feature selection saw (test split, seed 1): within 0.03 of the recorded AUROC."""
    root = ROOT
    spec = importlib.util.spec_from_file_location("sae_shapes", root / "benchmarks" / "sae_shapes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model, sae = clipx.load("demo"), SparseAutoencoder.load("demo-sae")
    concepts = json.loads((clipx.assets.DEMO_SAES["demo-sae"] / "concepts.json").read_text())
    scenes = clipx.shapes.ShapesDataset(300, seed=1, split="test")
    chosen = [concepts[value]["feature"] for _, value in bench.CONCEPTS]
    scores = bench.score_features(bench.patch_features(model, sae, scenes), bench.concept_coverage(scenes), chosen)
    for (_, value), (score, _) in zip(bench.CONCEPTS, scores):
        assert score >= concepts[value]["auroc"] - 0.03, value
