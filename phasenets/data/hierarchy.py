"""Class hierarchies: train one dataset folder at several levels of a taxonomy without copying files.

A hierarchy file is YAML: superclass -> list of class folder names, or -> a mapping of
sub-superclasses (nested to any depth)::

    clothing: [t-shirt_top, trouser, pullover, dress, coat, shirt]
    footwear_and_bags:
      footwear: [sandal, sneaker, ankle_boot]
      bags: [bag]

``relabel(splits, hierarchy)`` turns the class folders into the top-level superclasses (level 1:
clothing vs footwear_and_bags); ``relabel(splits, hierarchy, within="footwear_and_bags")`` keeps
only that superclass's samples and labels them by its children (level 2: footwear vs bags).
Levels count from the top (level 1); a class listed above the level asked for stands for itself.
ModNet's curriculum is level 1 (animals vs not), then level 2 within animals (canines vs felines).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

from phasenets.data.layout import DatasetError, DatasetSplits, Sample

__all__ = ["Hierarchy", "HierarchyError", "load_hierarchy", "relabel"]

# a superclass is a mapping of names to subtrees; a class is a leaf (None)
Tree = dict[str, Union["Tree", None]]


class HierarchyError(DatasetError):
    """A hierarchy file is malformed, or does not fit the dataset; the message says where."""


@dataclass(frozen=True)
class Hierarchy:
    """A parsed class hierarchy; ``tree`` maps names to subtrees, class names to ``None``."""

    tree: Tree
    source: str = "<hierarchy>"

    @classmethod
    def from_mapping(cls, mapping: Any, source: str = "<hierarchy>") -> Hierarchy:
        """Check and normalize a YAML-like mapping (class names may be given as numbers)."""
        if not isinstance(mapping, dict) or not mapping:
            raise HierarchyError(f"{source}: expected a mapping of superclass -> classes at the top level")
        tree = _parse_node(mapping, (), source)
        _check_unique_names(tree, source)
        return cls(tree, source)

    @property
    def classes(self) -> list[str]:
        """Every class (leaf) name, sorted."""
        return sorted(leaf for leaf, _ in _leaves(self.tree, ()))

    def groups(self, level: int | None = None, within: str | None = None) -> dict[str, list[str]]:
        """``{group name: its classes}`` at ``level`` (1 = top), inside the superclass ``within``.

        ``within`` is a superclass name (or a ``/``-separated path to one); ``level`` defaults to
        the level just below it. Classes listed higher up than ``level`` are groups of their own.
        """
        base: tuple[str, ...] = () if within is None else self._find(within)
        level = len(base) + 1 if level is None else level
        if level <= len(base):
            raise HierarchyError(f"level {level} is not below {within!r}, which is at level {len(base)}")
        subtree = self._subtree(base)
        groups: dict[str, list[str]] = {}
        for leaf, path in _leaves(subtree, base):
            name = path[level - 1] if len(path) >= level else leaf
            groups.setdefault(name, []).append(leaf)
        return groups

    def _find(self, within: str) -> tuple[str, ...]:
        wanted = tuple(part for part in within.split("/") if part)
        matches = [path for path in _group_paths(self.tree, ()) if path[-len(wanted):] == wanted]
        if len(matches) != 1:
            valid = ", ".join("/".join(path) for path in _group_paths(self.tree, ()))
            problem = "is ambiguous" if matches else "is not a superclass"
            raise HierarchyError(f"{within!r} {problem} in {self.source}; superclasses: {valid}")
        return matches[0]

    def _subtree(self, path: tuple[str, ...]) -> Tree:
        node = self.tree
        for name in path:
            node = node[name]
        return node


def load_hierarchy(path: str | Path) -> Hierarchy:
    """Read a hierarchy YAML file (see the module docstring for the format)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise HierarchyError(f"hierarchy file not found: {path}")
    try:
        mapping = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise HierarchyError(f"{path} is not valid YAML: {error}") from error
    return Hierarchy.from_mapping(mapping, str(path))


def relabel(
    splits: DatasetSplits,
    hierarchy: Hierarchy | str | Path,
    level: int | None = None,
    within: str | None = None,
) -> DatasetSplits:
    """A copy of ``splits`` whose classes are the hierarchy's groups at ``level`` (inside ``within``).

    Files are not touched: samples keep their paths and get the label of their group; samples of
    classes outside ``within`` are dropped. Classes and samples are sorted as `scan_dataset` sorts
    them. Raises `HierarchyError` when the hierarchy names classes the data lacks, leaves data
    classes out (at the top), or the result has fewer than two classes or an empty training group.
    """
    if not isinstance(hierarchy, Hierarchy):
        hierarchy = load_hierarchy(hierarchy)
    _check_classes(splits, hierarchy, check_unlisted=within is None)
    groups = hierarchy.groups(level, within)
    if len(groups) < 2:
        raise HierarchyError(f"{_describe(level, within)} of {hierarchy.source} has a single group "
                             f"({', '.join(groups)}): nothing to classify")
    classes = sorted(groups)
    group_of = {leaf: classes.index(name) for name, leaves in groups.items() for leaf in leaves}

    def remap(samples: list[Sample]) -> list[Sample]:
        kept = [Sample(s.path, group_of[splits.classes[s.label]]) for s in samples
                if splits.classes[s.label] in group_of]
        return sorted(kept, key=lambda sample: (sample.label, sample.path))

    result = replace(splits, classes=classes, train=remap(splits.train), validation=remap(splits.validation),
                     test=remap(splits.test))
    empty = sorted(set(classes) - {classes[s.label] for s in result.train})
    if empty:
        raise HierarchyError(f"no training images for group(s) {', '.join(empty)} of {hierarchy.source}")
    return result


# ----------------------------------------------------------------------------------------------


def _parse_node(node: Any, path: tuple[str, ...], source: str) -> Tree:
    where = "/".join(path) or "the top level"
    if isinstance(node, dict):
        if not node:
            raise HierarchyError(f"{source}: superclass {where} is empty")
        names = [_name(key, path, source) for key in node]
        return {name: _parse_node(value, (*path, name), source) for name, value in zip(names, node.values())}
    if isinstance(node, list):
        if not node:
            raise HierarchyError(f"{source}: superclass {where} lists no classes")
        tree: Tree = {}
        for item in node:
            if isinstance(item, dict):  # a list may mix classes and sub-superclasses
                tree.update(_parse_node(item, path, source))
            else:
                tree[_name(item, path, source)] = None
        return tree
    raise HierarchyError(f"{source}: superclass {where} must hold a list of classes or a mapping of "
                         f"superclasses, not {node!r}")


def _name(value: Any, path: tuple[str, ...], source: str) -> str:
    # digits' class folders are 0..9, which YAML reads as integers
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip() and "/" not in value:
        return value
    raise HierarchyError(f"{source}: {value!r} under {'/'.join(path) or 'the top level'} is not a usable "
                         "name; quote class and superclass names (no '/')")


def _leaves(tree: Tree, path: tuple[str, ...]):
    """``(class, path to it)`` for every class in ``tree``; the path ends with the class itself."""
    for name, subtree in tree.items():
        if subtree is None:
            yield name, (*path, name)
        else:
            yield from _leaves(subtree, (*path, name))


def _group_paths(tree: Tree, path: tuple[str, ...]):
    for name, subtree in tree.items():
        if subtree is not None:
            yield (*path, name)
            yield from _group_paths(subtree, (*path, name))


def _check_unique_names(tree: Tree, source: str) -> None:
    seen: dict[str, str] = {}
    names = [(path[-1], "/".join(path[:-1]) or "the top level") for _, path in _leaves(tree, ())]
    names += [(path[-1], "/".join(path[:-1]) or "the top level") for path in _group_paths(tree, ())]
    for name, parent in names:
        if name in seen:
            raise HierarchyError(f"{source}: {name!r} is listed twice, under {seen[name]} and under {parent}")
        seen[name] = parent


def _check_classes(splits: DatasetSplits, hierarchy: Hierarchy, check_unlisted: bool) -> None:
    listed, present = set(hierarchy.classes), set(splits.classes)
    absent = sorted(listed - present)
    if absent:
        raise HierarchyError(f"{hierarchy.source} lists classes that {splits.root} does not have: "
                             f"{', '.join(absent)} (its classes: {', '.join(splits.classes)})")
    unlisted = sorted(present - listed)
    if check_unlisted and unlisted:
        raise HierarchyError(f"{splits.root} has classes that {hierarchy.source} does not place: "
                             f"{', '.join(unlisted)}; add them to a superclass")


def _describe(level: int | None, within: str | None) -> str:
    if within is None:
        return f"level {level or 1}"
    return f"{within!r}" + (f" at level {level}" if level else "")
