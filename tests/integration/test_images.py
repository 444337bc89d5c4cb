"""agentrt/base: what it contains, and that building it again is a no-op."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.engine import image_build, images, recipes
from runtime.errors import ImageNotFoundError

BASE = "agentrt/base:latest"


def _run(client: Any, command: str) -> str:
    output = client.containers.run(
        BASE,
        ["sh", "-c", command],
        remove=True,
        network_disabled=True,
        labels={"agentrt.session": "test-images", "agentrt.run": "test-images"},
    )
    return bytes(output).decode()


@pytest.mark.docker
def test_building_base_again_is_skipped_quickly(docker_client: Any) -> None:
    first = image_build.build_image(docker_client, "base")
    started = time.monotonic()
    second = image_build.build_image(docker_client, "base")
    elapsed = time.monotonic() - started
    assert second.rebuilt is False
    assert second.method == "cached"
    assert second.id == first.id
    assert second.recipe_hash == recipes.recipe_hash("base")
    assert elapsed < 5


@pytest.mark.docker
def test_base_is_labelled_with_its_recipe_and_listed(docker_client: Any) -> None:
    labels = docker_client.images.get(BASE).labels
    assert labels["agentrt.image"] == "base"
    assert labels["agentrt.recipe"] == recipes.recipe_hash("base")
    listed = [i for i in images.list_images(docker_client) if BASE in i.tags]
    assert len(listed) == 1
    assert listed[0].current
    assert listed[0].ref == BASE
    assert images.image_digest(docker_client, BASE).startswith(("sha256:", "agentrt/base@"))


@pytest.mark.docker
def test_an_image_built_from_base_elsewhere_is_not_listed_as_agentrts(docker_client: Any) -> None:
    foreign = "agentrt-test/foreign:latest"
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {BASE}\nLABEL x=y\n".encode()),
        tag=foreign, pull=False, rm=True, labels={"agentrt.test": "foreign-image"},
    )
    try:
        # It inherits base's labels, recipe hash included: the labels alone cannot tell.
        assert image.labels[images.LABEL_IMAGE] == "base"
        assert image.labels[images.LABEL_RECIPE] == recipes.recipe_hash("base")
        listed = images.list_images(docker_client)
        assert [i for i in listed if foreign in i.tags or i.id == image.id] == []
        assert [(i.ref, i.current) for i in listed if BASE in i.tags] == [(BASE, True)]
    finally:
        for leftover in docker_client.images.list(filters={"label": "agentrt.test=foreign-image"}):
            docker_client.images.remove(leftover.id, force=True)


def test_only_tags_of_the_images_own_repository_make_it_agentrts() -> None:
    tags = ["agentrt/base:latest", "agentrt/base:old", "me/base:latest", "agentrt/codex:latest",
            "registry:5000/agentrt/base:latest"]
    assert images.own_tags("base", tags) == ["agentrt/base:latest", "agentrt/base:old"]
    assert images.own_tags("rootfs", ["agentrt/rootfs:0123abcd", "agentrt/base:latest"]) == [
        "agentrt/rootfs:0123abcd"
    ]
    assert images.own_tags("base", ["agentrt-test/foreign:latest"]) == []


@pytest.mark.docker
def test_base_has_git_python_ps_and_runs_as_uid_1000(docker_client: Any) -> None:
    out = _run(
        docker_client,
        "id -u; id -g; pwd; echo $HOME; git --version; python3 --version; ps -o pid= -p 1; "
        "sqlite3 --version >/dev/null && echo sqlite-ok",
    ).splitlines()
    assert out[:4] == ["1000", "1000", "/workspace", "/home/agent"]
    assert out[4].startswith("git version 2.")
    assert out[5].startswith("Python 3.")
    assert out[6].strip() == "1"
    assert out[7] == "sqlite-ok"


@pytest.mark.docker
def test_base_has_no_entrypoint(docker_client: Any) -> None:
    config = docker_client.images.get(BASE).attrs["Config"]
    assert not config.get("Entrypoint")
    assert config.get("WorkingDir") == "/workspace"


@pytest.mark.docker
def test_missing_image_says_how_to_build_it(docker_client: Any) -> None:
    with pytest.raises(ImageNotFoundError, match="`docker pull agentrt/does-not-exist:latest`"):
        images.require_image(docker_client, "agentrt/does-not-exist:latest")
    with pytest.raises(LookupError):
        images.image_digest(docker_client, "agentrt/does-not-exist:latest")


@pytest.mark.docker
def test_unknown_image_name_is_refused_before_any_build(docker_client: Any) -> None:
    with pytest.raises(ImageNotFoundError, match="unknown image"):
        image_build.build_image(docker_client, "no-such-recipe")


def test_recipe_hash_follows_the_recipe_files_and_the_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(recipes.images_dir(), tmp_path / "images")
    monkeypatch.setenv("AGENTRT_IMAGES_DIR", str(tmp_path / "images"))
    base, aider = recipes.recipe_hash("base"), recipes.recipe_hash("aider")
    assert recipes.recipe_hash("base") == base
    with (tmp_path / "images" / "base" / "packages").open("a") as packages:
        packages.write("less\n")
    assert recipes.recipe_hash("base") != base
    assert recipes.recipe_hash("aider") != aider  # a child is stale when its parent changes
    assert "less" in recipes.base_packages()
