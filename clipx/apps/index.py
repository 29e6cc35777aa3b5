"""`Index`: a folder of images embedded once, saved, and searched by caption or embedding.

Files on disk (`index.save(folder)`): `embeddings.safetensors` holds the unit image embeddings
[n_images, dim] (float32) and their digest; `index.json` the model's identity (a name and a fingerprint of
its config and readout weights), the source, every embedded file with its size and mtime, so that
`check()` tells which files changed or vanished since and `update()` re-embeds only those (and new ones),
and the digest of the embeddings it lists the files of. The two are one unit: index.json is written last,
and `Index.load` refuses embeddings that are not the ones index.json was saved with (a save stopped between
the two files, a file copied from another save), which would name the wrong file for a row.

`search` and `update` may run in different threads: update replaces the files and their embeddings as one,
and a search ranks and names the rows of one version of both.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..explain import Explanation, explain
from ..extras import require
from ..files import DIGEST, make_folder, read_json, read_safetensors, save_safetensors, write_json
from ..errors import caller_level
from ..model.clip import CLIP
from ..preprocess.image import image_files, open_image
from ..explain.embedding import explain_embedding
from ..model.inputs import embed_images, embed_texts, scores

FORMAT = 2  # 2: index.json holds the embeddings' digest. Format 1 (without) still loads.
EMBEDDINGS, MANIFEST = "embeddings.safetensors", "index.json"
SEARCH_CHUNK = 1 << 18  # rows scored at a time: bounds the scores' memory at 1 MB per query
BACKENDS = ("auto", "torch", "faiss")
# what "auto" searches with: torch, measured faster than FAISS's exact IndexFlatIP for one query over
# 1,000,000 x 512 (benchmarks/retrieval.py: 203 vs 297 ms, AMD EPYC, 2 threads); FAISS is opt-in
AUTO_BACKEND = "torch"


@dataclass
class FileState:
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileState":
        st = path.stat()
        return cls(str(path), st.st_size, st.st_mtime_ns)


@dataclass
class Hit:
    rank: int      # 1 = best
    path: str
    score: float   # the model's logit for this image and the query (see Index.search)
    position: int  # the image's row in the index


class Rows:
    """The embedded files and their embeddings, row for row: replaced as a whole, never changed, so that a
    search in one thread ranks and names one version of both while `update` builds the next in another."""

    def __init__(self, files: list[FileState], embeddings: torch.Tensor) -> None:
        self.files, self.embeddings = files, embeddings
        self.faiss = None  # the embeddings' FAISS index, built on the first search that asks for it


class Hits(Sequence):
    """The best images for one query, best first: `hits[0].path`, `.score`, `.rank`."""

    def __init__(self, index: "Index", query: Any, embedding: torch.Tensor, hits: list[Hit]) -> None:
        self.index, self.query, self._hits = index, query, hits
        self.embedding = embedding  # [dim] the unit query embedding the hits were ranked by

    def __getitem__(self, k):
        return self._hits[k]

    def __len__(self) -> int:
        return len(self._hits)

    @property
    def paths(self) -> list[str]:
        return [h.path for h in self._hits]

    def explain(self, method: str | None = None, **options: Any) -> Explanation:
        """Every hit explained against the query in one `clipx.explain` call: [n_hits, 1] maps. A caption
        query is explained as that caption; several captions or an embedding through the query embedding
        (`explain_embedding`: image maps only)."""
        if not self._hits:
            raise ValueError("no hits to explain")
        model = self.index.model
        if isinstance(self.query, str):
            return explain(model, self.paths, [self.query], method=method, **options)
        label = " | ".join(self.query) if isinstance(self.query, (list, tuple)) else "query embedding"
        return explain_embedding(model, self.paths, self.embedding, label, method, **options)

    def __repr__(self) -> str:
        rows = "\n".join(f"{h.rank:>4}  {h.score:8.3f}  {h.path}" for h in self._hits)
        return f"{'rank':>4}  {'score':>8}  path\n{rows}"


class Index:
    """Image embeddings of one model, for search. Build with `Index.build`, reopen with `Index.load`."""

    def __init__(self, model: CLIP, model_name: str | None, source: str | list[str], files: list[FileState],
                 embeddings: torch.Tensor, skipped: list[tuple[str, str]] | None = None) -> None:
        self.model, self.model_name = model, model_name
        self.fingerprint = model.fingerprint()
        self.source = source            # a folder (rescanned by update) or the list of files given
        self._rows = Rows(files, embeddings)
        self.skipped = skipped or []    # (path, why) of files that could not be read as images

    @property
    def files(self) -> list[FileState]:
        return self._rows.files

    @property
    def embeddings(self) -> torch.Tensor:
        """[n_images, dim] float32, unit rows, row k embedding `files[k]`."""
        return self._rows.embeddings

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"Index({len(self)} images, {len(self.skipped)} skipped, model {self.model_name or 'unnamed'}, "
                f"dim {self.embeddings.shape[1]})")

    # --- building ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: CLIP, images: str | os.PathLike | Sequence[str | os.PathLike], *, model_name: str | None = None,
              batch_size: int = 64, progress: bool = True) -> "Index":
        """Embed every image of a folder (searched recursively for files whose extension PIL reads) or of a
        list of paths, `batch_size` at a time. Files that cannot be read as images are skipped, listed in
        one warning and kept in `index.skipped`; a folder without any image is a ValueError.
        `model_name` ("demo", a hub id, a folder) is stored so that `Index.load` can load the model itself."""
        source = (os.path.abspath(images) if isinstance(images, (str, os.PathLike))
                  else [os.path.abspath(p) for p in images])
        index = cls(model, model_name, source, [], torch.zeros(0, 0))
        index.update(batch_size=batch_size, progress=progress)
        if not len(index):
            raise ValueError(f"none of the {len(index.skipped)} files of {images if isinstance(source, str) else 'the list'}"
                             " could be read as an image")
        return index

    def _listed(self) -> list[Path]:
        if isinstance(self.source, list):
            return [Path(p) for p in self.source]
        return image_files(self.source)

    def update(self, batch_size: int = 64, progress: bool = True) -> dict[str, list[str]]:
        """Bring the index up to date with its source: embed new and changed files (size or mtime differ),
        drop vanished ones, keep the rest; files skipped before are tried again. Returns {"added": [...], "changed": [...], "removed": [...]}."""
        current = self._rows
        known = {f.path: (f, row) for row, f in enumerate(current.files)}
        listed, todo, keep = self._listed(), [], []
        for path in listed:
            try:
                state = FileState.of(path)
            except OSError:
                state = FileState(str(path), -1, -1)  # vanished or unreadable: open_image says which below
            old = known.get(state.path)
            (keep if old is not None and old[0] == state else todo).append((state, old))
        removed = sorted(set(known) - {str(p) for p in listed})
        embedded, skipped = self._embed([s for s, _ in todo], batch_size, progress)
        files = [s for s, _ in keep] + [s for s, _ in todo if s.path in embedded]
        rows = [current.embeddings[old[1]] for _, old in keep] + [embedded[s.path] for s, _ in todo if s.path in embedded]
        self._rows = Rows(files, torch.stack(rows) if rows else current.embeddings[:0])  # one step: see Rows
        self.skipped = skipped
        if skipped:
            warnings.warn(f"skipped {len(skipped)} files that are not readable images:\n  "
                          + "\n  ".join(why for _, why in skipped), UserWarning, stacklevel=caller_level())
        return {"added": [s.path for s, old in todo if old is None and s.path in embedded],
                "changed": [s.path for s, old in todo if old is not None and s.path in embedded], "removed": removed}

    def _embed(self, states: list[FileState], batch_size: int, progress: bool):
        embedded, skipped = {}, []
        with tqdm(total=len(states), desc="embedding", unit="image", disable=not progress) as bar:
            for start in range(0, len(states), batch_size):
                batch = states[start:start + batch_size]
                pictures = []
                for state in batch:
                    try:
                        pictures.append((state.path, open_image(state.path)))
                    except (OSError, ValueError) as e:
                        skipped.append((state.path, str(e)))
                if pictures:
                    rows = embed_images(self.model, self.model.preprocess([im for _, im in pictures]))
                    embedded.update(zip((p for p, _ in pictures), rows))
                bar.update(len(batch))
        return embedded, skipped

    def check(self) -> dict[str, list[str]]:
        """Which embedded files changed (size or mtime) or vanished since they were embedded."""
        changed, vanished = [], []
        for f in self.files:
            try:
                now = FileState.of(Path(f.path))
            except OSError:  # gone, or no longer ours to read
                vanished.append(f.path)
                continue
            if now != f:
                changed.append(f.path)
        return {"changed": changed, "vanished": vanished}

    # --- search -----------------------------------------------------------------------------------
    def query_embedding(self, query: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """[dim] unit embedding of a caption, of several captions (the normalised mean of theirs, as a
        zero-shot class of several prompts), or of an embedding given [dim]."""
        if isinstance(query, torch.Tensor):
            if query.ndim != 1 or query.shape[0] != self.embeddings.shape[1]:
                raise ValueError(f"a query embedding must be [{self.embeddings.shape[1]}], got {list(query.shape)}")
            return torch.nn.functional.normalize(query.detach().float().cpu(), dim=0)
        captions = [query] if isinstance(query, str) else list(query)
        if not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError("a query is a caption, a list of captions or an embedding tensor")
        return torch.nn.functional.normalize(embed_texts(self.model, captions).cpu().mean(0), dim=0)

    def search(self, query: str | Sequence[str] | torch.Tensor, k: int = 10, backend: str = "auto") -> Hits:
        """The k images the model scores highest against the query, best first. `score` is the model's
        logit: exp(logit_scale) * cosine (+ logit_bias for SigLIP), as `logits_per_image` would give it.
        Exact either way: `backend="torch"` a float32 matrix-vector product and top-k, `SEARCH_CHUNK` rows at
        a time; "faiss" a `faiss.IndexFlatIP` of the embeddings (pip install clipx-lens[faiss]), built on first
        use and kept until `update()` (a copy of the embeddings in memory); "auto" is `AUTO_BACKEND`."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive whole number, got {k!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        q = self.query_embedding(query)
        rows = self._rows  # the version this search ranks and names, whatever update() does meanwhile
        if (AUTO_BACKEND if backend == "auto" else backend) == "faiss":
            if rows.faiss is None:
                rows.faiss = faiss_index(rows.embeddings)
            best_scores, best_rows = faiss_top_k(rows.faiss, q, k)
        else:
            best_scores, best_rows = top_k(rows.embeddings, q, k)
        logits = scores(self.model, best_scores[:, None], torch.ones(1, 1))[:, 0]  # cosine -> the model's logit
        hits = [Hit(r + 1, rows.files[row].path, float(s), row)
                for r, (s, row) in enumerate(zip(logits.tolist(), best_rows.tolist()))]
        return Hits(self, query, q, hits)

    # --- files ------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        """Write embeddings.safetensors, then index.json, which names its digest, into `folder` (made if
        needed); each whole or not at all. A save stopped between the two leaves a folder `load` refuses."""
        folder, rows = Path(folder), self._rows
        make_folder(folder)
        digest = save_safetensors({"embeddings": rows.embeddings.contiguous()}, folder / EMBEDDINGS)
        manifest = {"format": FORMAT, "model": {"name": self.model_name, "fingerprint": self.fingerprint},
                    "dim": rows.embeddings.shape[1], "source": self.source, "embeddings_xxh3_128": digest,
                    "files": [[f.path, f.size, f.mtime_ns] for f in rows.files],
                    "skipped": [list(s) for s in self.skipped]}
        write_json(manifest, folder / MANIFEST, indent=1)

    @classmethod
    def load(cls, folder: str | os.PathLike, model: CLIP | None = None, model_name: str | None = None,
             check: bool = True) -> "Index":
        """An index saved by `save`. model=None loads the model the index names (`clipx.load(name)`); a model
        whose fingerprint differs from the index's is refused, naming both. A file that does not fit the other
        is a ValueError naming it. With `check`, files that changed or vanished since are one warning."""
        folder = Path(folder)
        manifest = _read_manifest(folder / MANIFEST)
        stored = manifest["model"]
        if model is None:
            if not stored["name"]:
                raise ValueError(f"{folder / MANIFEST} names no model: pass the model it was built with")
            from ..io.loading import load

            model, model_name = load(stored["name"]), stored["name"]
        theirs = model.fingerprint()
        if theirs != stored["fingerprint"]:
            raise ValueError(f"{folder} was built with model {stored['name'] or '(unnamed)'} (fingerprint "
                             f"{stored['fingerprint'][:12]}), not with {model_name or 'the model given'} (fingerprint "
                             f"{theirs[:12]}): search it with the model it was built with, or build a new index")
        embeddings = _read_embeddings(folder / EMBEDDINGS, manifest)
        files = [FileState(*f) for f in manifest["files"]]
        index = cls(model, model_name or stored["name"], manifest["source"], files, embeddings,
                    [tuple(s) for s in manifest["skipped"]])
        if check:
            stale = index.check()
            if stale["changed"] or stale["vanished"]:
                warnings.warn(f"{folder}: since the index was built, " + "; ".join(
                    f"{what}: {', '.join(paths)}" for what, paths in stale.items() if paths)
                    + " (index.update() re-embeds them)", UserWarning, stacklevel=caller_level())
        return index


def top_k(embeddings: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest cosines of unit rows with a unit query, and their rows, best first; chunked so the
    scores of a million rows never sit in memory at once."""
    k = min(k, embeddings.shape[0])
    best_scores, best_rows = query.new_empty(0), torch.empty(0, dtype=torch.long)
    for start in range(0, embeddings.shape[0], SEARCH_CHUNK):
        chunk = embeddings[start:start + SEARCH_CHUNK].float() @ query.float()
        s, r = chunk.topk(min(k, chunk.shape[0]))
        best_scores, order = torch.cat([best_scores, s]).topk(min(k, best_scores.shape[0] + s.shape[0]))
        best_rows = torch.cat([best_rows, r + start])[order]
    return best_scores, best_rows


def faiss_index(embeddings: torch.Tensor):
    """An exact inner-product FAISS index (`IndexFlatIP`) holding a copy of the unit rows."""
    faiss = require("faiss", "Search with backend='faiss'", "faiss")
    flat = faiss.IndexFlatIP(embeddings.shape[1])
    flat.add(embeddings.detach().float().cpu().contiguous().numpy())
    return flat


def faiss_top_k(flat, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k` through a `faiss_index`: the k largest cosines with a unit query and their rows, best first."""
    scores, rows = flat.search(query.detach().float().cpu().numpy()[None], min(k, flat.ntotal))
    return torch.from_numpy(scores[0]), torch.from_numpy(rows[0]).long()


def _read_manifest(path: Path) -> dict[str, Any]:
    def invalid(what: str) -> ValueError:
        return ValueError(f"{path} is not a valid clipx index manifest: {what}")

    m = read_json(path)  # a ValueError naming the file where it cannot be read or is not a JSON object
    missing = sorted({"format", "model", "dim", "source", "files", "skipped"} - set(m))
    if missing:
        raise invalid(f"it lacks {', '.join(missing)}")
    if type(m["format"]) is not int or not 1 <= m["format"] <= FORMAT:
        raise invalid(f"it has format {m['format']!r}, this clipx reads formats 1 to {FORMAT}")
    if m["format"] >= 2 and not isinstance(m.get("embeddings_xxh3_128"), str):
        raise invalid(f"format {m['format']} holds the embeddings' digest, embeddings_xxh3_128, a string; "
                      f"got {m.get('embeddings_xxh3_128')!r:.80}")
    model = m["model"]
    if not (isinstance(model, dict) and isinstance(model.get("fingerprint"), str)
            and (model.get("name") is None or isinstance(model["name"], str))):
        raise invalid("model must be {\"name\": str or null, \"fingerprint\": str}")
    if not (type(m["dim"]) is int and m["dim"] > 0):
        raise invalid(f"dim must be a positive whole number, got {m['dim']!r}")
    if not (isinstance(m["source"], str) or (isinstance(m["source"], list) and all(isinstance(p, str) for p in m["source"]))):
        raise invalid("source must be a folder or a list of paths")
    for k, f in enumerate(m["files"] if isinstance(m["files"], list) else [None]):
        if not (isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and all(type(x) is int for x in f[1:])):
            raise invalid(f"files[{k}] must be [path, size, mtime_ns], got {f!r:.80}")
    if not (isinstance(m["skipped"], list) and all(isinstance(s, list) and len(s) == 2 for s in m["skipped"])):
        raise invalid("skipped must be a list of [path, reason]")
    return m


def _read_embeddings(path: Path, manifest: dict[str, Any]) -> torch.Tensor:
    n, dim = len(manifest["files"]), manifest["dim"]
    tensors, metadata = read_safetensors(path)  # a ValueError naming the file where it is unreadable or damaged
    if set(tensors) != {"embeddings"}:
        raise ValueError(f"{path} is not a clipx index's embeddings: it holds {sorted(tensors)}, "
                         "not one tensor 'embeddings'")
    if manifest["format"] >= 2 and metadata.get(DIGEST) != manifest["embeddings_xxh3_128"]:
        raise ValueError(f"{path} is not the file {MANIFEST} was saved with (a save stopped between the two "
                         "files, or one copied from another save): its rows would be named by another file "
                         "list; save the index again, or build it anew")
    e = tensors["embeddings"]
    if e.dtype != torch.float32 or tuple(e.shape) != (n, dim):
        raise ValueError(f"{path} holds a {e.dtype} tensor of shape {list(e.shape)}, but {MANIFEST} lists {n} files "
                         f"of dim {dim} (float32): the two files do not belong together")
    norms = e.norm(dim=1)
    if not bool(torch.isfinite(norms).all()) or bool(((norms - 1).abs() > 1e-3).any()):
        raise ValueError(f"{path} holds rows that are not unit embeddings (tampered with?)")
    return e
