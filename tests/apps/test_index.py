"""Image index: building over a folder with files that are not images, save / load and tampered, damaged or
half-saved folders, a full disk, changed files, another model, search (also while another thread
updates), and explanations of the hits."""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import clipx
import clipx.apps.index as index_module
import clipx.files
from clipx.apps.index import EMBEDDINGS, MANIFEST, FileState, Index, top_k
from clipx.cli import main
from clipx.files import save_safetensors
from checkpoints import make_checkpoint
from damage import fill_disk, flip_bit, retype, truncate
from floats import assert_float32_close


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 48, 3), dtype=np.uint8))


@pytest.fixture()
def folder(tmp_path):
    """Four PNGs (one in a subfolder), a PNG cut short, a text file named .png, and a text file."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for k, name in enumerate(["a.png", "b.png", "c.png", "sub/d.png"]):
        picture(k).save(root / name)
    (root / "cut.png").write_bytes((root / "a.png").read_bytes()[:40])
    (root / "words.png").write_text("not an image")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def build(model, source, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = Index.build(model, source, progress=False, **kwargs)
    return index, [str(w.message) for w in caught]


def test_build_embeds_every_image_and_lists_the_unreadable_ones(model, folder):
    index, messages = build(model, folder, model_name="tiny")
    names = ["a.png", "b.png", "c.png", "sub/d.png"]
    assert index.paths == [str(folder / n) for n in names]
    assert [p for p, _ in index.skipped] == [str(folder / "cut.png"), str(folder / "words.png")]
    assert len(messages) == 1 and "skipped 2 files" in messages[0]
    assert "cut.png" in messages[0] and "words.png" in messages[0] and "notes.txt" not in messages[0]
    with torch.no_grad():
        expected = torch.cat([F.normalize(model.encode_image(model.preprocess([folder / n])), dim=-1) for n in names])
    assert_float32_close(index.embeddings, expected)


def test_a_folder_without_images_is_an_error(model, tmp_path):
    with pytest.raises(ValueError, match="holds no image files"):
        Index.build(model, tmp_path, progress=False)
    (tmp_path / "words.png").write_text("x")
    with pytest.raises(ValueError, match="none of the 1 files"), pytest.warns(UserWarning, match="skipped 1"):
        Index.build(model, tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Index.build(model, tmp_path / "nowhere", progress=False)


def test_save_load_round_trip(model, folder, tmp_path):
    index, _ = build(model, folder, model_name="tiny")
    index.save(tmp_path / "idx")
    for name in ("tiny", None):
        again = Index.load(tmp_path / "idx", model=model, model_name=name)
        assert torch.equal(again.embeddings, index.embeddings)
        assert again.files == index.files and again.skipped == index.skipped and again.source == index.source
        assert again.model_name == "tiny"
    assert again.search("a cat", k=2).paths == index.search("a cat", k=2).paths


def test_load_without_a_model_loads_the_one_it_names(folder, tmp_path):
    demo = clipx.load("demo")
    index, _ = build(demo, [folder / "a.png", folder / "b.png"], model_name="demo")
    index.save(tmp_path / "idx")
    again = Index.load(tmp_path / "idx")
    assert again.model_name == "demo" and torch.equal(again.embeddings, index.embeddings)


def test_another_model_is_refused_naming_both(model, folder, tmp_path):
    index, _ = build(model, folder, model_name="tiny")
    index.save(tmp_path / "idx")
    make_checkpoint(tmp_path / "other", seed=1)
    other = clipx.load(tmp_path / "other")
    with pytest.raises(ValueError, match=r"built with model tiny .* not with other-model"):
        Index.load(tmp_path / "idx", model=other, model_name="other-model")


def _tamper(folder, manifest=None, embeddings=None):
    """Edited files, with the digest that binds them kept fitting (so that the other checks are what refuse them)."""
    data = json.loads((folder / MANIFEST).read_text())
    if manifest is not None:
        manifest(data)
    if embeddings is not None:
        tensor = embeddings(load_file(folder / EMBEDDINGS)["embeddings"])
        data["embeddings_xxh3_128"] = save_safetensors({"embeddings": tensor}, folder / EMBEDDINGS)
    (folder / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize("manifest, embeddings, file, match", [
    (lambda m: m["files"].pop(), None, EMBEDDINGS, "lists 3 files"),
    (None, lambda e: torch.cat([e, e[:1]]), EMBEDDINGS, "shape \\[5, 24\\]"),
    (None, lambda e: e * 2, EMBEDDINGS, "not unit embeddings"),
    (None, lambda e: e.half(), EMBEDDINGS, "torch.float16"),
    (lambda m: m.pop("dim"), None, MANIFEST, "lacks dim"),
    (lambda m: m["files"][0].pop(), None, MANIFEST, "files\\[0\\] must be"),
    (lambda m: m.update(format=9), None, MANIFEST, "format 9"),
    (lambda m: m.update(model="tiny"), None, MANIFEST, "model must be"),
    (lambda m: m.pop("embeddings_xxh3_128"), None, MANIFEST, "format 2 holds the embeddings' digest"),
])
def test_tampered_files_are_refused_naming_them(model, folder, tmp_path, manifest, embeddings, file, match):
    index, _ = build(model, folder)
    index.save(tmp_path / "idx")
    _tamper(tmp_path / "idx", manifest, embeddings)
    with pytest.raises(ValueError, match=match) as error:
        Index.load(tmp_path / "idx", model=model)
    assert file in str(error.value)


@pytest.mark.parametrize("damage", [lambda p: flip_bit(p, bit=17), lambda p: retype(p, "embeddings", "I32"), truncate],
                         ids=["bit-flipped", "retyped", "truncated"])
def test_damaged_embeddings_are_refused_naming_them(model, folder, tmp_path, damage):
    index, _ = build(model, folder)
    index.save(tmp_path / "idx")
    damage(tmp_path / "idx" / EMBEDDINGS)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'idx' / EMBEDDINGS))} is (damaged|not a readable)"):
        Index.load(tmp_path / "idx", model=model)


def changed_folder(model, folder, tmp_path):
    """An index saved of the folder, and the folder changed since: one file gone, one new, as many files."""
    old, _ = build(model, folder)
    old.save(tmp_path / "idx")
    (folder / "a.png").unlink()
    picture(7).save(folder / "e.png")
    with pytest.warns(UserWarning, match="skipped 2"):
        old.update(progress=False)
    return old


def disk_full(path, data):
    raise OSError(errno.ENOSPC, "No space left on device")


def killed(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("stop, error", [((clipx.files, "_write", disk_full), OSError),
                                         ((index_module, "write_json", killed), KeyboardInterrupt)],
                         ids=["disk-full-at-index.json", "killed-before-index.json"])
def test_a_save_stopped_between_its_two_files_is_refused(model, folder, tmp_path, monkeypatch, stop, error):
    """Case 1 of issue 29: the new embeddings under the old file list named rows by other files."""
    index = changed_folder(model, folder, tmp_path)
    with monkeypatch.context() as m:
        m.setattr(*stop)
        with pytest.raises(error):
            index.save(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / MANIFEST).read_text())["files"][0][0] == str(folder / "a.png")  # the old
    with pytest.raises(ValueError, match=f"{tmp_path / 'idx' / EMBEDDINGS} is not the file index.json was saved "
                                         "with \\(a save stopped between the two files"):
        Index.load(tmp_path / "idx", model=model)
    index.save(tmp_path / "idx")
    assert Index.load(tmp_path / "idx", model=model).paths == index.paths


def test_embeddings_copied_from_another_save_are_refused(model, folder, tmp_path):
    index = changed_folder(model, folder, tmp_path)  # as many rows as the saved index
    index.save(tmp_path / "other")
    os.replace(tmp_path / "other" / EMBEDDINGS, tmp_path / "idx" / EMBEDDINGS)
    with pytest.raises(ValueError, match="is not the file index.json was saved with"):
        Index.load(tmp_path / "idx", model=model)


def test_an_index_of_format_1_still_loads(model, folder, tmp_path):
    index, _ = build(model, folder)
    index.save(tmp_path / "idx")
    data = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    del data["embeddings_xxh3_128"]
    (tmp_path / "idx" / MANIFEST).write_text(json.dumps({**data, "format": 1}))
    save_file({"embeddings": index.embeddings}, tmp_path / "idx" / EMBEDDINGS)  # no digest either
    again = Index.load(tmp_path / "idx", model=model)
    assert again.paths == index.paths and torch.equal(again.embeddings, index.embeddings)


def test_a_full_disk_is_an_oserror_naming_the_file_and_the_saved_index_stays(model, folder, tmp_path, monkeypatch):
    index = changed_folder(model, folder, tmp_path)
    before = {p: (tmp_path / "idx" / p).read_bytes() for p in os.listdir(tmp_path / "idx")}
    fill_disk(monkeypatch, after=64)
    with pytest.raises(OSError, match=f"^\\[Errno 28\\] No space left on device: '{tmp_path / 'idx' / EMBEDDINGS}'$"):
        index.save(tmp_path / "idx")
    assert {p: (tmp_path / "idx" / p).read_bytes() for p in os.listdir(tmp_path / "idx")} == before


def test_the_cli_says_a_full_disk_in_one_line(folder, tmp_path, monkeypatch, capsys):
    fill_disk(monkeypatch)
    assert main(["index", str(folder), "--out", str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert "clipx index: warning: skipped 2 files that are not readable images" in err  # the CLI prints warnings
    assert err.endswith(f"\nclipx index: error: [Errno 28] No space left on device: '{tmp_path / 'idx' / EMBEDDINGS}'\n")
    assert "Traceback" not in err and os.listdir(tmp_path / "idx") == []


def test_garbage_files_are_refused(model, folder, tmp_path):
    index, _ = build(model, folder)
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / EMBEDDINGS).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        Index.load(tmp_path / "idx", model=model)
    (tmp_path / "idx" / MANIFEST).write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Index.load(tmp_path / "idx", model=model)


def test_changed_and_vanished_files_are_reported_and_update_reembeds_only_them(model, folder, tmp_path):
    index, _ = build(model, folder)
    index.save(tmp_path / "idx")
    picture(9).save(folder / "b.png")
    os.utime(folder / "b.png", ns=(1, 1))  # a new mtime, whatever the clock's resolution
    (folder / "c.png").unlink()
    picture(5).save(folder / "e.png")
    with pytest.warns(UserWarning, match=r"changed: .*b\.png; vanished: .*c\.png"):
        again = Index.load(tmp_path / "idx", model=model)
    assert again.check() == {"changed": [str(folder / "b.png")], "vanished": [str(folder / "c.png")]}
    embedded = []
    original = index_module.open_image
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index_module, "open_image", lambda path: embedded.append(path) or original(path))
        with pytest.warns(UserWarning, match="skipped 2"):  # skipped files are tried again
            change = again.update(progress=False)
    assert change == {"added": [str(folder / "e.png")], "changed": [str(folder / "b.png")],
                      "removed": [str(folder / "c.png")]}
    assert sorted(embedded) == sorted(str(folder / n) for n in ("b.png", "cut.png", "e.png", "words.png"))
    fresh, _ = build(model, folder)
    order = [fresh.paths.index(p) for p in again.paths]
    assert_float32_close(again.embeddings, fresh.embeddings[order])
    assert again.check() == {"changed": [], "vanished": []}


def test_search_finds_the_constructed_best_row(model):
    dim = model.text.proj.out_features
    # orthonormal rows: the query's cosine with each is its coefficient, so the order is known
    embeddings = torch.linalg.qr(torch.randn(dim, 10, generator=torch.Generator().manual_seed(0)))[0].T.contiguous()
    files = [FileState(f"img{k}.png", 1, 1) for k in range(10)]
    index = Index(model, None, [f.path for f in files], files, embeddings)
    query = embeddings[7] + 0.5 * embeddings[3] + 0.25 * embeddings[0]
    hits = index.search(query, k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and [h.path for h in hits] == ["img7.png", "img3.png", "img0.png"]
    cosine = F.normalize(query, dim=0) @ embeddings[7]
    assert hits[0].score == pytest.approx(float(cosine * model.logit_scale.detach().exp()), rel=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(index.search(embeddings[0], k=50)) == 10
    with pytest.raises(ValueError, match="k must be"):
        index.search(embeddings[0], k=0)
    with pytest.raises(ValueError, match="must be \\[24\\]"):
        index.search(torch.ones(5))


def test_chunked_top_k_equals_a_full_sort(monkeypatch):
    embeddings = F.normalize(torch.randn(1000, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    query = F.normalize(torch.randn(16), dim=0)
    monkeypatch.setattr(index_module, "SEARCH_CHUNK", 64)
    scores, rows = top_k(embeddings, query, 25)
    expected = (embeddings @ query).topk(25)
    assert torch.equal(rows, expected.indices) and torch.allclose(scores, expected.values)


def test_faiss_search_equals_torch_search_and_follows_update(model, folder):
    index, _ = build(model, folder)
    dim = index.embeddings.shape[1]
    generator = torch.Generator().manual_seed(2)
    index = Index(model, None, index.source, [FileState(f"img{k}.png", 1, 1) for k in range(5000)],
                  F.normalize(torch.randn(5000, dim, generator=generator), dim=-1))
    for _ in range(5):
        query = torch.randn(dim, generator=generator)
        by_torch, by_faiss = index.search(query, k=20, backend="torch"), index.search(query, k=20, backend="faiss")
        assert [h.position for h in by_faiss] == [h.position for h in by_torch]
        assert_float32_close(torch.tensor([h.score for h in by_faiss]), torch.tensor([h.score for h in by_torch]))
    assert index.search(query, k=20).paths == by_torch.paths  # auto
    assert index._rows.faiss.ntotal == 5000
    with pytest.warns(UserWarning, match="skipped 2"):
        index.update(progress=False)  # back to the folder's 4 images: the FAISS index is rebuilt from them
    assert index.search("a red circle", k=9, backend="faiss").paths == index.search("a red circle", k=9).paths
    assert index._rows.faiss.ntotal == len(index) == 4
    with pytest.raises(ValueError, match="backend must be one of auto, torch, faiss; got 'annoy'"):
        index.search(query, backend="annoy")


def test_hits_explain_equals_explain_on_the_same_pairs(model, folder, monkeypatch):
    index, _ = build(model, folder)
    hits = index.search("a red circle", k=3)
    exp = hits.explain(method="rollout")
    direct = clipx.explain(model, hits.paths, ["a red circle"], method="rollout")
    assert torch.equal(exp.image, direct.image) and torch.equal(exp.scores, direct.scores)
    assert_float32_close(exp.scores[:, 0], torch.tensor([h.score for h in hits]))
    several = index.search(["a red circle", "a blue square"], k=2)
    monkeypatch.setattr(index_module, "embed_texts", None)  # the query embedding the search ranked by serves
    assert_float32_close(several.explain().scores[:, 0], torch.tensor([h.score for h in several]))


def test_a_search_while_another_thread_updates_names_the_rows_it_ranked(model, folder, monkeypatch):
    """Case 10 of issue 29: the search is held between ranking and naming while update() drops a.png (every
    later row moves up) and adds e.png; its hits must still name the files of the rows it ranked."""
    index, _ = build(model, folder)
    before = list(index.paths)
    ranked, updated = threading.Event(), threading.Event()
    real_top_k = index_module.top_k

    def slow_top_k(*args):
        best = real_top_k(*args)
        ranked.set()
        assert updated.wait(30)
        return best
    monkeypatch.setattr(index_module, "top_k", slow_top_k)
    found = {}
    search = threading.Thread(target=lambda: found.update(hits=index.search("a red circle", k=4)))
    search.start()
    try:
        assert ranked.wait(30)
        (folder / "a.png").unlink()
        picture(7).save(folder / "e.png")
        with pytest.warns(UserWarning, match="skipped 2"):
            index.update(progress=False)
    finally:
        updated.set()
        search.join()
    hits = found["hits"]
    assert len(hits) == 4 and [h.path for h in hits] == [before[h.position] for h in hits]
    assert index.paths != before and str(folder / "a.png") in [h.path for h in hits]
