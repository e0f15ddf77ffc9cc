"""Reading a policy directory: which files, in which order, and clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.policy.errors import PolicyLoadError
from tether.policyfiles import load_policy_dir, read_policy_dir

RULE = """\
rules:
  - id: {id}
    effect: allow
    agents: [bot]
    mcp: {{tools: [search]}}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_recursive_lexical_order_of_relative_paths(tmp_path: Path) -> None:
    for name in ["d.yaml", "b/c.yml", "a.yaml", "b/a/z.yaml", "notes.txt", "b.yaml.bak"]:
        write(tmp_path / name, RULE.format(id=name.replace("/", "-")))
    names = [source.name for source in read_policy_dir(tmp_path)]
    assert names == ["a.yaml", "b/a/z.yaml", "b/c.yml", "d.yaml"]


def test_hidden_files_and_directories_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", RULE.format(id="a"))
    write(tmp_path / ".a.yaml.swp.yaml", "not: [valid")
    write(tmp_path / ".git" / "x.yaml", "not: [valid")
    assert [source.name for source in read_policy_dir(tmp_path)] == ["a.yaml"]


def test_configmap_layout_symlinked_files_are_read(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as links into a hidden, atomically swapped directory.
    write(tmp_path / "..2026_11_29" / "a.yaml", RULE.format(id="a"))
    (tmp_path / "..data").symlink_to("..2026_11_29")
    (tmp_path / "a.yaml").symlink_to("..data/a.yaml")
    sources = read_policy_dir(tmp_path)
    assert [source.name for source in sources] == ["a.yaml"]
    assert "id: a" in sources[0].text


def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", RULE.format(id="a"))
    (tmp_path / "loop").symlink_to(tmp_path)
    assert [source.name for source in read_policy_dir(tmp_path)] == ["a.yaml"]


def test_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"\xef\xbb\xbf" + RULE.format(id="a").encode())
    assert read_policy_dir(tmp_path)[0].text.startswith("rules:")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        read_policy_dir(tmp_path / "nope")
    assert str(caught.value) == f"{tmp_path / 'nope'}: policy directory not found"


def test_not_a_directory(tmp_path: Path) -> None:
    file = write(tmp_path / "a.yaml", RULE.format(id="a"))
    with pytest.raises(PolicyLoadError, match="not a directory"):
        read_policy_dir(file)


def test_no_policy_file(tmp_path: Path) -> None:
    write(tmp_path / "README.md", "policies go here")
    with pytest.raises(PolicyLoadError, match=r"no policy files \(\*\.yaml, \*\.yml\)"):
        read_policy_dir(tmp_path)


def test_non_utf8_file_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", RULE.format(id="a"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_bytes(b"rules:\n  - id: caf\xe9\n")
    with pytest.raises(PolicyLoadError) as caught:
        read_policy_dir(tmp_path)
    assert str(caught.value) == "sub/b.yaml:2: not valid UTF-8 (byte 0xe9)"


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "gone.yaml").symlink_to(tmp_path / "missing-target.yaml")
    with pytest.raises(PolicyLoadError) as caught:
        read_policy_dir(tmp_path)
    assert str(caught.value) == "gone.yaml: cannot read: no such file or directory"


def test_load_policy_dir(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", RULE.format(id="first"))
    write(tmp_path / "b.yaml", RULE.format(id="second"))
    policy_set = load_policy_dir(tmp_path)
    assert [rule.id for rule in policy_set.rules] == ["first", "second"]
    assert policy_set.version.startswith("sha256:")


def test_load_errors_name_the_relative_file(tmp_path: Path) -> None:
    write(tmp_path / "team" / "a.yaml", "rules:\n  - id: x\n    effect: maybe\n")
    with pytest.raises(PolicyLoadError, match=r"^team/a\.yaml:"):
        load_policy_dir(tmp_path)
