"""`strg verify`: an export on a runtime of this machine against the reference sample it carries.

No torch: this is how a deployment checks that its runtime computes what the trained model computed.
Rows, in order:

- ``files``: every file's SHA-256 against the manifest (a changed file fails here and stops);
- ``rpn``, ``backbone``, ``head``: each network on the reference's inputs (the head on the reference's
  features and proposals) against the reference's outputs;
- ``chain``: the whole pipeline on the reference clips against the reference's proposals and logits.

Float outputs pass within ``atol + rtol * max |reference|`` (the tolerances recorded in the manifest),
masks must be equal and the top-1 class the same (:mod:`strg_deploy.engines.compare`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

from strg_deploy.contract.manifest import read_manifest, verify_files
from strg_deploy.contract.networks import rpn_frames
from strg_deploy.contract.reference import read_reference
from strg_deploy.engines.compare import Comparison, compare_outputs
from strg_deploy.engines.pipeline import Pipeline


@dataclasses.dataclass(frozen=True)
class Verification:
    """``rows`` (module docstring), ``passed`` when all pass, ``clips`` the reference clips' names,
    ``pipeline`` the loaded export that was verified (None when a file had changed: nothing was loaded),
    ``backends`` what ran each network (``Pipeline.describe``)."""

    rows: list[Comparison]
    clips: tuple[str, ...]
    pipeline: Pipeline | None

    @property
    def backends(self) -> list[dict]:
        return self.pipeline.describe() if self.pipeline is not None else []

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)


def files_row(backend: str, changed: list[str]) -> Comparison:
    """The ``files`` row: passes when no file changed (``output`` names the changed files)."""
    return Comparison(
        network="files",
        runtime=backend,
        inputs="sha256",
        output=", ".join(changed),
        max_abs=0.0,
        tolerance=0.0,
        masks_equal=True,
        top1_equal=None,
        reordered=0,
        passed=not changed,
    )


def verify_export(
    folder: str | Path,
    backend: str | Mapping[str, str] = "onnxruntime",
    *,
    threads: int = 0,
    on_row: Callable[[Comparison], None] | None = None,
) -> Verification:
    """Verify the export in ``folder`` on ``backend`` (module docstring); ``on_row`` sees each row as it
    is made. StrgError for an unreadable export or reference sample."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    reference = read_reference(folder, manifest)
    rows: list[Comparison] = []

    def add(row: Comparison) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    name = backend if isinstance(backend, str) else "mixed"
    changed = verify_files(folder, manifest)
    add(files_row(name, changed))
    if changed:
        return Verification(rows, reference.names, None)
    pipeline = Pipeline.load(folder, backend, threads=threads, check_files=False)
    cfg, clips = pipeline.cfg, reference.clips
    expected = reference.outputs
    shape = (clips.shape[0], cfg.feature_frames, cfg.proposals.num_boxes)
    tolerances = (reference.atol, reference.rtol, reference.tie)
    runtime = {n: net.info.name for n, net in pipeline.networks.items()}
    feeds = {
        "rpn": {"frames": rpn_frames(clips, cfg.backbone.temporal_stride)},
        "backbone": {"clip": clips},
        "head": {
            "features": expected["backbone"]["features"],
            "boxes": expected["rpn"]["boxes"].reshape(*shape, 4),
            "mask": expected["rpn"]["mask"].reshape(shape),
        },
    }
    inputs = "reference"
    for network, feed in feeds.items():
        actual = pipeline.run_network(network, feed)
        add(compare_outputs(network, runtime[network], inputs, expected[network], actual, *tolerances))
    chain_expected = {
        "boxes": feeds["head"]["boxes"],
        "scores": expected["rpn"]["scores"].reshape(shape),
        "mask": feeds["head"]["mask"],
        "logits": expected["head"]["logits"],
    }
    chain_runtime = "+".join(dict.fromkeys(runtime.values()))
    actual = pipeline.run(clips).as_dict()
    add(compare_outputs("chain", chain_runtime, inputs, chain_expected, actual, *tolerances))
    return Verification(rows, reference.names, pipeline)
