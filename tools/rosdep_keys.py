"""Check package.xml's rosdep keys against ros/rosdistro for Ubuntu noble (ROS 2 Kilted).

    python tools/rosdep_keys.py ROSDISTRO_CHECKOUT [--out test/data/rosdep_keys_noble_kilted.txt]

ROSDISTRO_CHECKOUT is a clone of ros/rosdistro. A system key resolves when its ``ubuntu``
entry gives packages (a list, ``'*'`` or ``noble``) or a pip rule; a ROS key is a package
released in ``kilted/distribution.yaml``. It prints every key that does not resolve and
exits 1 if any; else it stores package.xml's keys (names only, with the rosdistro commit)
so that ``test_package.py`` checks ``package.xml`` against them without a network: a new
dependency fails that test until this tool has checked it.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import yaml

DISTRO, UBUNTU = "kilted", "noble"


def resolves_on_ubuntu(entry) -> bool:
    """A rosdep rule gives something to install on Ubuntu ``UBUNTU``."""
    if not isinstance(entry, dict) or "ubuntu" not in entry:
        return False
    u = entry["ubuntu"]
    if isinstance(u, list):
        return bool(u)
    if isinstance(u, dict):
        if "pip" in u or "apt" in u or "source" in u:
            return True
        rule = u.get(UBUNTU, u.get("*"))
        return bool(rule) and (isinstance(rule, list) or isinstance(rule, dict))
    return False


def noble_keys(root: Path) -> list[str]:
    keys = set()
    for f in ("rosdep/base.yaml", "rosdep/python.yaml"):
        rules = yaml.safe_load((root / f).read_text())
        keys.update(k for k, e in rules.items() if resolves_on_ubuntu(e))
    dist = yaml.safe_load((root / DISTRO / "distribution.yaml").read_text())
    for name, repo in dist["repositories"].items():
        if "release" in repo:
            keys.update(repo["release"].get("packages", [name]))
    return sorted(keys)


def package_keys(package_xml: Path) -> list[str]:
    """Every dependency key of a package.xml (format 3 tags), sorted."""
    import xml.etree.ElementTree as ET

    tags = ("depend", "exec_depend", "build_depend", "buildtool_depend", "test_depend", "build_export_depend")
    root = ET.parse(package_xml).getroot()
    return sorted({el.text.strip() for tag in tags for el in root.iter(tag) if el.text})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rosdistro", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "test" / "data"
                    / f"rosdep_keys_{UBUNTU}_{DISTRO}.txt")
    a = ap.parse_args(argv)
    try:
        commit = subprocess.run(["git", "-C", str(a.rosdistro), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    known = set(noble_keys(a.rosdistro))
    ours = package_keys(Path(__file__).resolve().parents[1] / "package.xml")
    missing = [k for k in ours if k not in known]
    if missing:
        raise SystemExit(f"rosdep keys that do not resolve on ubuntu {UBUNTU} / {DISTRO}: {', '.join(missing)}; "
                         "use a key from rosdep/*.yaml or document a pip install instead")
    a.out.write_text(f"# package.xml's rosdep keys, checked on ubuntu {UBUNTU} / ROS 2 {DISTRO} against "
                     f"ros/rosdistro {commit} by tools/rosdep_keys.py\n" + "\n".join(ours) + "\n")
    print(f"{len(ours)} keys resolve -> {a.out}")


if __name__ == "__main__":
    main()
