"""The pure parts of the image pipeline: cache keys, names, apt source parsing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.e2e.testbed import images, oci


def test_every_ref_is_tagged_and_distinct() -> None:
    assert len(set(images.ALL_REFS)) == len(images.ALL_REFS)
    for ref in images.ALL_REFS:
        oci.split_ref(ref)
    assert images.COREDNS_REF.startswith("ktbed.local/coredns:v1.12.")


def test_keys_are_stable_and_distinct() -> None:
    first = images._Keys.compute()
    assert first == images._Keys.compute()
    values = list(vars(first).values())
    assert len(set(values)) == len(values)


def test_tree_hash_follows_content_names_and_exec_bits(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_text("2")
    seen = {images._hash_tree(tmp_path)}
    (tmp_path / "a").write_text("changed")
    seen.add(images._hash_tree(tmp_path))
    (tmp_path / "sub" / "b").rename(tmp_path / "sub" / "c")
    seen.add(images._hash_tree(tmp_path))
    (tmp_path / "a").chmod(0o755)
    seen.add(images._hash_tree(tmp_path))
    assert len(seen) == 4


def test_archive_names_carry_image_tag_and_key() -> None:
    name = images._archive_name("ktbed.local/nginx:1.22-bookworm", "ab" * 32)
    assert name == f"nginx_1.22-bookworm-{'ab' * 8}.tar"


def test_prune_keeps_only_the_current_archive_of_an_image(tmp_path: Path) -> None:
    old = tmp_path / images._archive_name(images.ECHO_REF, "0" * 64)
    new = tmp_path / images._archive_name(images.ECHO_REF, "1" * 64)
    other = tmp_path / images._archive_name(images.PAUSE_REF, "0" * 64)
    for p in (old, new, other):
        p.write_text("x")
    images._prune(tmp_path, new)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new.name, other.name])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "deb [arch=amd64 signed-by=/usr/share/keyrings/a.gpg] http://x/debian bookworm main",
            {"/usr/share/keyrings/a.gpg"},
        ),
        (
            "Types: deb\nURIs: http://deb.debian.org/debian\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            {"/usr/share/keyrings/debian-archive-keyring.gpg"},
        ),
        ("deb http://deb.debian.org/debian bookworm main\n", set()),
    ],
)
def test_signed_by_finds_keyrings_in_both_source_formats(text: str, expected: set[str]) -> None:
    assert images._signed_by(text) == expected


def test_cache_root_follows_ktbed_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTBED_CACHE", "/tmp/elsewhere")
    assert images.default_cache_dir() == Path("/tmp/elsewhere/images")
    monkeypatch.delenv("KTBED_CACHE")
    assert images.default_cache_dir() == Path("/var/cache/ktpy-testbed/images")


def test_static_base_has_the_nonroot_user() -> None:
    base = images._static_base()
    passwd = base["etc/passwd"]
    assert isinstance(passwd, tuple)
    assert isinstance(passwd[0], bytes)
    assert b":65532:65532:" in passwd[0]
    assert base["tmp"] == oci.Directory(0o1777)


@pytest.mark.parametrize("n", [0, 1, 250, 251, 252, 251 * 4096 + 7, 3 * 251 * 4096])
def test_echo_bytes_digest_matches_the_documented_pattern(n: int) -> None:
    expected = hashlib.sha256(bytes(i % 251 for i in range(n))).hexdigest()
    assert images.echo_bytes_sha256(n) == expected


def test_echo_bytes_digest_of_100_mib() -> None:
    # What `curl /bytes?n=104857600 | sha256sum` gave from ktbed-echo run from its image.
    digest = "85a38859acdd54fd3381d9f1e0d4c8ad8158f2c66c0a496d1756585056ebed76"
    assert images.echo_bytes_sha256(100 * 1024 * 1024) == digest
