"""What the services accept on their command line and in their environment,
read from their Rust sources (clap derive), without compiling anything.

For every struct deriving `clap::Args` or `clap::Parser` it collects the
fields' `env = "…"` names, whether each is required, and the structs it
flattens (`#[command(flatten)]`). A binary's root is the struct (or the
subcommand enum) deriving `Parser` in its crate. A `Parser` struct with a
`#[command(subcommand)]` field (the CLI: global flags, then a command) also
roots each variant of that enum whose type is an argument struct, with the
struct's fields and the root's own (`tallyhouse canary`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Field:
    """One field of an argument struct."""

    name: str
    type: str
    env: str | None
    required: bool
    flatten: bool


@dataclass
class ArgStruct:
    """A clap argument struct."""

    crate: str
    name: str
    fields: list[Field] = field(default_factory=list)


@dataclass
class Crate:
    """What one crate declares."""

    name: str
    structs: dict[str, ArgStruct] = field(default_factory=dict)
    #: Subcommand name ("" when the binary has none) -> root struct name.
    roots: dict[str, str] = field(default_factory=dict)
    #: Enums deriving `Subcommand`: name -> variant (kebab case) -> its type.
    subcommands: dict[str, dict[str, str]] = field(default_factory=dict)


def _strip_comments(src: str) -> str:
    """`src` without // and /* */ comments (string literals kept intact)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _balanced(src: str, start: int, open_: str, close: str) -> int:
    """Index just past the bracket closing the one at `start`."""
    depth = 0
    i = start
    while i < len(src):
        c = src[i]
        if c == '"':
            j = i + 1
            while j < len(src) and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            i = j + 1
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced brackets")


def _split_fields(body: str) -> list[str]:
    """The comma-separated items of a struct or enum body, attributes kept."""
    items, cur, depth, i = [], [], 0, 0
    while i < len(body):
        c = body[i]
        if c == "#" and body.startswith("#[", i):
            end = _balanced(body, i + 1, "[", "]")
            cur.append(body[i:end])
            i = end
            continue
        if c == '"':
            j = i + 1
            while j < len(body) and body[j] != '"':
                j += 2 if body[j] == "\\" else 1
            cur.append(body[i : j + 1])
            i = j + 1
            continue
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        if c == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if "".join(cur).strip():
        items.append("".join(cur))
    return items


_ITEM = re.compile(
    r"#\[derive\((?P<derive>[^)]*)\)\]\s*(?:#\[[^\]]*(?:\[[^\]]*\][^\]]*)*\]\s*)*"
    r"(?:pub(?:\([^)]*\))?\s+)?(?P<kind>struct|enum)\s+(?P<name>\w+)\s*\{"
)
_ATTR = re.compile(r"#\[\s*(?:arg|clap|command)\s*\((.*)\)\s*\]\s*$", re.S)


def _parse_field(item: str) -> Field | None:
    attrs = re.findall(r"#\[.*?\](?=\s*(?:#\[|pub|\w+\s*:))", item, re.S)
    rest = re.sub(r"#\[.*?\](?=\s*(?:#\[|pub|\w+\s*:))", "", item, flags=re.S).strip()
    m = re.match(r"(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:\s*(.+)$", rest, re.S)
    if not m:
        return None
    name, typ = m.group(1), " ".join(m.group(2).split())
    args = " ".join(a.group(1) for a in (_ATTR.match(x.strip()) for x in attrs) if a)
    env = re.search(r'\benv\s*=\s*"([^"]+)"', args)
    flatten = re.search(r"\bflatten\b", args) is not None
    has_default = re.search(r"\bdefault_values?(?:_t)?\s*=", args) is not None
    explicit = re.search(r"\brequired\s*=\s*(true|false)", args)
    optional_type = typ.startswith(("Option<", "Vec<", "bool"))
    required = explicit.group(1) == "true" if explicit else not (has_default or optional_type)
    return Field(
        name=name, type=typ, env=env.group(1) if env else None, required=required and not flatten, flatten=flatten
    )


def _type_name(typ: str) -> str:
    """The struct a field's type names: `limits::HttpLimitArgs` and
    `Box<x::Args>` are `HttpLimitArgs` and `Args`."""
    inner = re.sub(r"^Box<\s*(.*?)\s*>$", r"\1", typ)
    return re.sub(r"<.*", "", inner).rsplit("::", 1)[-1].strip()


_SUBCOMMAND_FIELD = re.compile(
    r"#\[\s*command\s*\(\s*subcommand\s*\)\s*\]\s*(?:pub(?:\([^)]*\))?\s+)?\w+\s*:\s*([\w:]+)"
)
_VARIANT = re.compile(r"(\w+)\s*\(\s*(?:Box<)?\s*(?:[\w:]*::)?(\w+)\s*>?\s*\)")

_TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")


def _without_test_modules(src: str) -> str:
    """`src` without its `#[cfg(test)] mod … { … }` blocks (a test's own
    `Parser` is no binary's root)."""
    while m := _TEST_MODULE.search(src):
        src = src[: m.start()] + src[_balanced(src, m.end() - 1, "{", "}") :]
    return src


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def scan_crate(name: str, src_dir: Path) -> Crate:
    """The argument structs and binary roots of one crate."""
    crate = Crate(name=name)
    #: (Parser struct, the enum of its `#[command(subcommand)]` field).
    commands: list[tuple[str, str]] = []
    for path in sorted(src_dir.rglob("*.rs")):
        src = _without_test_modules(_strip_comments(path.read_text()))
        for m in _ITEM.finditer(src):
            derive = m.group("derive")
            if not re.search(r"\b(Args|Parser|Subcommand)\b", derive):
                continue
            open_at = m.end() - 1
            body = src[open_at + 1 : _balanced(src, open_at, "{", "}") - 1]
            is_parser = re.search(r"\bParser\b", derive) is not None
            if m.group("kind") == "struct":
                st = ArgStruct(crate=name, name=m.group("name"))
                for item in _split_fields(body):
                    f = _parse_field(item)
                    if f:
                        st.fields.append(f)
                crate.structs[st.name] = st
                if is_parser:
                    crate.roots[""] = st.name
                    for item in _split_fields(body):
                        sub = _SUBCOMMAND_FIELD.search(item)
                        if sub:
                            commands.append((st.name, _type_name(sub.group(1))))
            elif is_parser:
                # A subcommand enum: Variant(Type) or Variant(Box<Type>).
                for item in _split_fields(body):
                    item = re.sub(r"#\[.*?\]", "", item, flags=re.S).strip()
                    v = _VARIANT.match(item)
                    if v:
                        crate.roots[_kebab(v.group(1))] = v.group(2)
            else:
                variants = crate.subcommands.setdefault(m.group("name"), {})
                for item in _split_fields(body):
                    item = re.sub(r"#\[.*?\]", "", item, flags=re.S).strip()
                    v = _VARIANT.match(item)
                    if v:
                        variants[_kebab(v.group(1))] = v.group(2)
    # `tallyhouse canary`: the root's flags and the variant's.
    for root, enum in commands:
        for sub, typ in crate.subcommands.get(enum, {}).items():
            if sub in crate.roots:
                continue
            if typ in crate.subcommands:
                # A group of subcommands (`tallyhouse job run`): the root's
                # flags (the group's own are positional or --flags only).
                crate.roots[sub] = root
                continue
            if typ not in crate.structs:
                continue
            both = ArgStruct(crate=name, name=f"{root}+{typ}")
            both.fields = [
                Field(name=root, type=root, env=None, required=False, flatten=True),
                Field(name=typ, type=typ, env=None, required=False, flatten=True),
            ]
            crate.structs[both.name] = both
            crate.roots[sub] = both.name
    return crate


@dataclass
class Workspace:
    """The crates whose arguments matter: the services and `platform`."""

    crates: dict[str, Crate]

    def struct(self, crate: str, name: str) -> ArgStruct:
        """A struct by name, looked up in `crate`, then in `platform`."""
        for c in (crate, "platform"):
            if name in self.crates[c].structs:
                return self.crates[c].structs[name]
        raise KeyError(f"{crate}: no argument struct {name}")

    def fields(self, crate: str, subcommand: str = "") -> list[Field]:
        """Every field a binary (or one of its subcommands) accepts, through
        its flattened structs."""
        roots = self.crates[crate].roots
        if subcommand not in roots:
            raise KeyError(f"{crate}: no subcommand {subcommand!r} (has {sorted(roots)})")
        out: list[Field] = []
        stack = [self.struct(crate, roots[subcommand])]
        while stack:
            st = stack.pop()
            for f in st.fields:
                if f.flatten:
                    stack.append(self.struct(st.crate, _type_name(f.type)))
                else:
                    out.append(f)
        return out

    def envs(self, crate: str, subcommand: str = "") -> dict[str, Field]:
        """Environment variable -> field, for one binary (or subcommand)."""
        return {f.env: f for f in self.fields(crate, subcommand) if f.env}

    def all_envs(self) -> set[str]:
        """Every environment name any scanned crate's arguments know."""
        return {f.env for c in self.crates.values() for s in c.structs.values() for f in s.fields if f.env}


def scan(crates: dict[str, Path]) -> Workspace:
    """Scans crate name -> its src/ folder."""
    return Workspace({name: scan_crate(name, path) for name, path in crates.items()})
