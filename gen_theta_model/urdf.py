"""Reading a URDF safely: the checks that must pass before anything walks its tree.

``parse_urdf`` reports malformed XML with its line, duplicate joints, kinematic loops (which
would make every walk towards the root run forever) and missing meshes as one
``EmbodimentError`` naming the file and the element, then loads the URDF with yourdfpy.
"""

from __future__ import annotations

from pathlib import Path

import yourdfpy
from lxml import etree


class EmbodimentError(ValueError):
    """A URDF or robot YAML cannot describe a robot; the message names file and joint."""


def parse_urdf(path: Path) -> yourdfpy.URDF:
    """Load a URDF with yourdfpy after checking what would make it fail late or hang: XML syntax
    (line and column), duplicate joint names, a kinematic loop, missing meshes. EmbodimentError names it.
    """
    if not path.is_file():
        raise EmbodimentError(f"{path}: URDF file not found")
    try:
        # Parse first with lxml so that malformed XML reports line and column.
        tree = etree.parse(str(path))
    except etree.XMLSyntaxError as err:
        raise EmbodimentError(f"{path}: malformed XML: {err}") from err
    names = [j.get("name") for j in tree.getroot().iter("joint") if j.getparent() is tree.getroot()]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise EmbodimentError(f"{path}: duplicate joint name '{n}'")
        seen.add(n)
    _check_tree(tree, path)
    _check_meshes(tree, path)
    try:
        return yourdfpy.URDF.load(
            str(path),
            build_scene_graph=False,
            load_meshes=False,
            build_collision_scene_graph=False,
            load_collision_meshes=False,
        )
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise EmbodimentError(f"{path}: not a valid URDF: {err}") from err


def _check_tree(tree: etree._ElementTree, path: Path) -> None:
    """Check that the joints form a tree: each link the child of one joint at most, no loop.

    A loop (a joint whose child is the base link, a chain that returns to itself)
    would make every walk towards the root run forever.
    """
    parent: dict[str, tuple[str, str]] = {}  # child link -> (joint, parent link)
    for j in tree.getroot().findall("joint"):
        child, up = j.find("child"), j.find("parent")
        if child is None or up is None:
            continue  # yourdfpy reports the missing element
        link = child.get("link", "")
        if link in parent:
            raise EmbodimentError(f"{path}: link '{link}' has two parent joints, '{parent[link][0]}' and "
                                  f"'{j.get('name')}': a URDF must be a tree (no kinematic loops)")
        parent[link] = (j.get("name", ""), up.get("link", ""))
    for start in parent:
        chain, link = [start], parent[start][1]
        while link in parent and link not in chain:
            chain.append(link)
            link = parent[link][1]
        if link == start:
            joints = ", ".join(f"'{parent[c][0]}'" for c in reversed(chain))
            raise EmbodimentError(f"{path}: kinematic loop: joints {joints} lead from link '{start}' back to "
                                  "itself; a URDF must be a tree")


def _check_meshes(tree: etree._ElementTree, path: Path) -> None:
    """Every <mesh filename> must exist (relative to the URDF or a package:// path)."""
    for mesh in tree.getroot().iter("mesh"):
        filename = mesh.get("filename", "")
        candidates = [path.parent / filename]
        if filename.startswith("package://"):
            rel = filename[len("package://") :]
            pkg, _, sub = rel.partition("/")
            candidates = [path.parent / sub, path.parent.parent / sub, path.parent / rel, path.parent.parent / rel]
            try:
                from ament_index_python.packages import get_package_share_directory

                candidates.append(Path(get_package_share_directory(pkg)) / sub)
            except (ImportError, LookupError, OSError, ValueError):  # no ament index here
                pass
        elif filename.startswith("file://"):
            candidates = [Path(filename[len("file://") :])]
        if not any(c.is_file() for c in candidates):
            link = mesh.getparent().getparent().getparent()
            raise EmbodimentError(f"{path}: link '{link.get('name')}' refers to missing mesh '{filename}'")
