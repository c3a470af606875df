"""Render a kustomization in Python: the subset of kustomize that k8s/ uses.

Used by the manifest tests on machines without the kustomize binary (``kubectl kustomize``); where the
binary is present, a test checks that both render the same objects. Supported: ``resources`` (files
and directories), ``namespace``, ``nameSuffix`` (names only: nothing in k8s/ refers to a suffixed
object), ``labels`` (metadata only, kustomize's default), ``images`` (``newName``/``newTag``),
``configMapGenerator`` from ``files`` with ``options.disableNameSuffixHash`` (no content hash), and
``patches`` either as JSON 6902 operations with a ``target`` or as a strategic-merge ``$patch: delete``
of a whole object. Anything else is refused, not ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

_SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "nameSuffix", "labels", "images", "patches",
              "configMapGenerator"}
# Kinds kustomize leaves without a namespace (ours, and the CRDs we ship objects of: kustomize does the
# same for CRDs it knows nothing of only when told, so those carry no namespace in k8s/ either).
_CLUSTER_SCOPED = {"Namespace", "NodePool", "EC2NodeClass", "ClusterRole", "ClusterRoleBinding",
                   "CustomResourceDefinition", "StorageClass", "PersistentVolume"}


class KustomizeError(ValueError):
    pass


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kustomize build directory`` would print."""
    path = directory / "kustomization.yaml"
    kust = yaml.safe_load(path.read_text())
    unknown = set(kust) - _SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(render(target))
        else:
            objects.extend(d for d in yaml.safe_load_all(target.read_text()) if d)
    for generator in kust.get("configMapGenerator", []):
        objects.append(_config_map(directory, generator, path))
    if "nameSuffix" in kust:
        for obj in objects:
            obj["metadata"]["name"] += kust["nameSuffix"]
    for patch in kust.get("patches", []):
        objects = _apply_patch(objects, patch, path)
    for image in kust.get("images", []):
        for obj in objects:
            _retag(obj, image)
    if "namespace" in kust:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = kust["namespace"]
    for label in kust.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError(f"{path}: labels with includeSelectors/includeTemplates are not implemented")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    return objects


def _config_map(directory: Path, generator: dict[str, Any], where: Path) -> dict[str, Any]:
    options = generator.get("options", {})
    if set(generator) - {"name", "files", "options"} or set(options) - {"labels", "annotations", "disableNameSuffixHash"}:
        raise KustomizeError(f"{where}: configMapGenerator fields this renderer does not implement: {generator}")
    if not options.get("disableNameSuffixHash"):
        raise KustomizeError(f"{where}: configMapGenerator without disableNameSuffixHash (the content hash) is not implemented")
    metadata: dict[str, Any] = {"name": generator["name"]}
    for field in ("annotations", "labels"):
        if field in options:
            metadata[field] = dict(options[field])
    data = {}
    for entry in generator.get("files", []):
        key, _, file = entry.rpartition("=")
        data[key or Path(file).name] = (directory / file).read_text()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    return all(obj.get(k) == v if k == "kind" else obj["metadata"].get(k) == v for k, v in target.items())


def _apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], where: Path) -> list[dict[str, Any]]:
    body = yaml.safe_load(patch["patch"])
    if isinstance(body, dict) and body.get("$patch") == "delete":
        gone = [o for o in objects if o["kind"] == body["kind"] and o["metadata"]["name"] == body["metadata"]["name"]]
        if not gone:
            raise KustomizeError(f"{where}: delete patch matches nothing: {body['kind']}/{body['metadata']['name']}")
        return [o for o in objects if o not in gone]
    if not isinstance(body, list) or "target" not in patch:
        raise KustomizeError(f"{where}: only JSON 6902 patches with a target and $patch: delete are implemented")
    hits = [i for i, o in enumerate(objects) if _matches(o, patch["target"])]
    if not hits:
        raise KustomizeError(f"{where}: patch target {patch['target']} matches nothing")
    result = list(objects)
    for i in hits:
        result[i] = jsonpatch.apply_patch(copy.deepcopy(objects[i]), body)
    return result


def _retag(obj: Any, image: dict[str, str]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image" and isinstance(value, str):
                name, _, tag = value.partition(":")
                if name == image["name"]:
                    obj[key] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
            else:
                _retag(value, image)
    elif isinstance(obj, list):
        for item in obj:
            _retag(item, image)
