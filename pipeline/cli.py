"""The command line: ``zsl extract|info|synthesize|semantics|train|evaluate|predict|compare|import-xlsa17``
(also ``python cli.py ...`` from the repository root; ``--help`` on each).

``--help`` imports no torch (< 1 s): the commands import the library inside, and torch is loaded
once a command runs, under a Ctrl-C handler that exits with one line (an exception raised inside
torch's C++ initialisers can abort the process instead).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from pipeline import interrupt

interrupt.while_starting()

import click  # noqa: E402

from pipeline.choices import BACKBONE_NAMES, DATASETS, DTYPES, MODEL_NAMES, is_backbone  # noqa: E402
from pipeline.config import EVALUATE, EXTRACT, TRAIN, ExtractConfig  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402

EXIT_IMAGES_FAILED = 3


def _backbone(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: a backbone name (None: not given, where that is allowed)."""
    if value is None or is_backbone(value):
        return value
    raise click.BadParameter(f"{value!r}: use one of {BACKBONE_NAMES}", param=param)


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        logging.getLogger().setLevel(logging.DEBUG)


class _Command(click.Command):
    """A sub-command: accepts ``-v/--verbose`` after its name too, loads torch (and the torchvision fix)
    under the start-up Ctrl-C handler before running, and turns a PipelineError into one line on stderr
    and exit status 1."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, callback=_verbose,
                                        help="Log debugging details."))

    def invoke(self, ctx: click.Context) -> object:
        interrupt.while_starting()
        import pipeline.compat  # noqa: F401  (torch)

        interrupt.once_started()  # from here on, Ctrl-C is click's "Aborted!"
        try:
            return super().invoke(ctx)
        except PipelineError as e:
            raise click.ClickException(str(e)) from e


class _Group(click.Group):
    command_class = _Command


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
def cli(verbose: bool) -> None:
    """Zero-shot recognition on cached backbone features."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its probes for absent SIMD builds


@cli.command()
@click.option("--dataset", type=click.Choice(DATASETS, case_sensitive=False), default="synthetic", show_default=True)
@click.option("--root", type=click.Path(path_type=Path), default=Path("data/synthetic"), show_default=True,
              help="Dataset folder (see README for each dataset's layout).")
@click.option("--splits", type=click.Path(path_type=Path), default=None,
              help="imagenet-split.json (ImageNet), xlsa17 att_splits.mat (CUB, AWA2, SUN), cls_ids.pickle "
                   "(COCO), unseen tag list (tags), unseen class list (folder, webdataset: makes it a zero-shot "
                   "dataset).")
@click.option("--backbone", default=EXTRACT.backbone, show_default=True, callback=_backbone,
              help=f"{BACKBONE_NAMES}.")
@click.option("--pretrained", default=EXTRACT.pretrained, show_default=True,
              help="Weights: a tag (imagenet, IMAGENET1K_V2, openai, laion2b_s34b_b79k, ...), a local file, or none.")
@click.option("--image-size", type=click.IntRange(min=16), default=EXTRACT.image_size,
              help="Crop size in px [default: 224; CLIP and timm: the model's].")
@click.option("--grid/--no-grid", default=EXTRACT.grid, show_default=True,
              help="Also store spatial features (attention models).")
@click.option("--mid-grid/--no-mid-grid", default=EXTRACT.mid_grid,
              help="With --grid, also store an earlier stage's spatial features (grid_mid: DRMN multi-level fusion) "
                   "[default: as --grid].")
@click.option("--dtype", type=click.Choice(DTYPES), default=EXTRACT.dtype, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=EXTRACT.batch_size,
              help="Images a batch [default: 64 on a GPU; on the CPU 32 at 224 px, fewer for larger images "
                   "(8 at 448): faster there, and a quarter of the memory].")
@click.option("--workers", type=click.IntRange(min=0), default=EXTRACT.workers, show_default=True,
              help="Image decoding workers (threads on CPU, processes on CUDA).")
@click.option("--device", default=EXTRACT.device, show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="HDF5 feature file to write.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing output (other settings, or to recompute); it stays until the new one is done.")
@click.option("--max-failures", type=click.FloatRange(min=0), default=EXTRACT.max_failures, show_default=True,
              help="Unreadable images allowed (recorded, exit status 3): a fraction below 1, else a count.")
@click.option("--merge", is_flag=True, default=EXTRACT.merge,
              help="Under torchrun: join the ranks' shards into one self-contained file (default: virtual data "
                   "sets over the shards, which stay in OUTPUT.shards).")
def extract(dataset: str, root: Path, splits: Path | None, output: Path, overwrite: bool, **settings: Any) -> None:
    """Run a frozen backbone over every image once and store the features (resumable; under
    ``torchrun --nproc-per-node N`` one shard per process, joined at the end)."""
    from pipeline.distributed import extract_dataset

    result = extract_dataset(dataset, root, splits, output, ExtractConfig(**settings), overwrite)
    click.echo(result.summary())
    if result.failures:
        sys.exit(EXIT_IMAGES_FAILED)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
def info(file: Path) -> None:
    """Print a feature file's schema, split counts, provenance and completeness."""
    from pipeline.store import FeatureStore

    with FeatureStore(file) as store:
        click.echo(store.describe())


@cli.command()
@click.option("--output", type=click.Path(path_type=Path), default=Path("data/synthetic"), show_default=True)
@click.option("--images-per-class", type=int, default=24, show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=TRAIN.seed, show_default=True)
@click.option("--multilabel", is_flag=True, help="1-3 objects per image, tagged with their classes.")
def synthesize(output: Path, images_per_class: int, image_size: int, seed: int, multilabel: bool) -> None:
    """Draw the built-in synthetic zero-shot dataset (colour x pattern x shape)."""
    from pipeline.datasets.synthetic import generate_synthetic, load_synthetic

    generate_synthetic(output, images_per_class=images_per_class, image_size=image_size, seed=seed,
                       multilabel=multilabel)
    data = load_synthetic(output)
    click.echo(f"{output}: {len(data)} images, {len(data.classes)} classes, "
               + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()))


@cli.command()
@click.option("--features", type=click.Path(path_type=Path), required=True,
              help="Feature file whose classes (and their order) the semantics follow.")
@click.option("--output", type=click.Path(path_type=Path), required=True, help="Semantics HDF5 file to write.")
@click.option("--attributes", default=None,
              help="synthetic, an xlsa17 att_splits.mat / binaryAtt_splits.mat, or a class,attr1,... CSV/TSV.")
@click.option("--attribute-key", default="att", show_default=True, help="att or original_att (.mat).")
@click.option("--attribute-names", default=None, help="CUB_attributes.txt, AWA2_predicates.txt, SUN_attributes.mat.")
@click.option("--normalisation", type=click.Choice(["l2", "none"]), default="l2", show_default=True)
@click.option("--text", "text", multiple=True,
              help="Class-name encoder, repeatable: clip, minilm, glove, glove:PATH, vectors:PATH (given vectors).")
@click.option("--vector-names", default=None, help="Names of the rows of vectors:PATH (.txt/.pickle/.json).")
@click.option("--clip-model", default=None,
              help="open_clip architecture of --text clip [default: the feature store's, when its backbone is "
                   "clip:ARCH, else ViT-B-32].")
@click.option("--clip-pretrained", default=None,
              help="Its weights: a tag, a local checkpoint, or none [default: the feature store's, when its backbone "
                   "is CLIP, else openai].")
@click.option("--templates", default="imagenet7", show_default=True, help="Prompt set: simple, imagenet7, imagenet80.")
@click.option("--attribute-vectors", default=None,
              help="Attribute-name embeddings: a pickled [A, E] file or a text encoder (minilm, glove, clip).")
@click.option("--graph", type=click.Choice(["none", "wordnet"]), default="none", show_default=True)
@click.option("--wnids", default=None, help="JSON {class: wnid} when the classes are not wnids themselves.")
@click.option("--graph-text", default="glove", show_default=True,
              help="Encoder of the graph's node names; minilm+glove: both, each unit norm, concatenated.")
@click.option("--glosses/--no-glosses", default=False, show_default=True,
              help="Sentence encoders (minilm, clip) also read each WordNet class's and node's definition.")
@click.option("--graph-links", type=click.Choice(["hypernyms+instances", "hypernyms"]), default="hypernyms+instances",
              show_default=True, help="WordNet links followed upward (DGP: hypernyms).")
@click.option("--data-root", default=None, help="Dataset root (for --attributes synthetic).")
def semantics(features: Path, output: Path, text: tuple[str, ...], **settings: object) -> None:
    """Class semantics: attributes, class-name embeddings, WordNet graph (cached per part)."""
    from pipeline.semantics.build import SemanticsConfig, build_semantics
    from pipeline.semantics.file import SemanticsFile

    built = build_semantics(features, output, SemanticsConfig(text=text, **settings))
    with SemanticsFile(output) as sem:
        click.echo(sem.describe())
    click.echo(f"built: {', '.join(built) or 'nothing (all parts up to date)'}")


def _ks(ctx: click.Context, param: click.Parameter, text: str) -> tuple[int, ...]:
    """Click callback: a comma-separated list of positive whole numbers, e.g. ``1,5,10``."""
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"{text!r}: expected positive whole numbers separated by commas, e.g. 1,5,10",
                                 param=param)
    return ks


def _hparam(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise click.BadParameter(f"{text!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


@cli.command()
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), required=True, help="sdl is multi-label.")
@click.option("--features", type=click.Path(path_type=Path), default=Path("features/image_features.h5"),
              show_default=True)
@click.option("--semantics", type=click.Path(path_type=Path), default=Path("features/semantics.h5"), show_default=True)
@click.option("--source", default=TRAIN.semantics, show_default=True, help="attributes or text:<encoder>.")
@click.option("--clip-features", type=click.Path(path_type=Path), default=None,
              help="CLIP features of the same images (cfzsl).")
@click.option("--hparam", "hparams", multiple=True, help="Fixed hyperparameter KEY=VALUE (repeatable).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=TRAIN.seed, show_default=True)
@click.option("--select/--no-select", default=TRAIN.select, show_default=True, help="Grid search on validation.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=TRAIN.val_fraction,
              show_default=True)
@click.option("--val-folds", type=click.IntRange(min=1), default=TRAIN.val_folds,
              help="Validation draws averaged by selection [default: 5 for closed-form models, else 1].")
@click.option("--device", default=TRAIN.device, show_default=True,
              help="Where a network trains: auto, cpu, cuda, cuda:1, ... (closed forms run on the CPU).")
@click.option("--output", type=click.Path(path_type=Path), default=Path("models/model.pt"), show_default=True)
def train(model_name: str, features: Path, semantics: Path, source: str, clip_features: Path | None,
          hparams: tuple[str, ...], seed: int, select: bool, val_fraction: float, val_folds: int | None,
          device: str, output: Path) -> None:
    """Train a model on cached features; hyperparameters and gamma chosen on validation only."""
    from pipeline.train import TrainConfig, describe_checkpoint, train_files

    cfg = TrainConfig(model=model_name, semantics=source, seed=seed, select=select, val_fraction=val_fraction,
                      hparams=dict(_hparam(h) for h in hparams), val_folds=val_folds, device=device)
    checkpoint = train_files(features, semantics, cfg, output, clip_features)
    click.echo(f"{output}: {describe_checkpoint(checkpoint)}")


@cli.command()
@click.option("--model-file", type=click.Path(path_type=Path), default=Path("models/model.pt"), show_default=True)
@click.option("--features", type=click.Path(path_type=Path), default=Path("features/image_features.h5"),
              show_default=True)
@click.option("--semantics", type=click.Path(path_type=Path), default=Path("features/semantics.h5"), show_default=True)
@click.option("--clip-features", type=click.Path(path_type=Path), default=None)
@click.option("--candidate-sets", type=click.Path(path_type=Path), default=None,
              help="JSON {set: [class, ...]} (e.g. imagenet-testsets.json) for Hit@k per set.")
@click.option("--metrics", type=click.Path(path_type=Path), default=Path("metrics.json"), show_default=True)
@click.option("--plots", type=click.Path(path_type=Path), default=Path("plots"), show_default=True)
@click.option("--ks", default=",".join(map(str, EVALUATE.ks)), show_default=True, callback=_ks,
              help="Hit@k at these k (comma-separated).")
@click.option("--tag-ks", default=",".join(map(str, EVALUATE.tag_ks)), show_default=True, callback=_ks,
              help="Multi-label data: P/R/F1 at these k.")
def evaluate(model_file: Path, features: Path, semantics: Path, clip_features: Path | None,
             candidate_sets: Path | None, metrics: Path, plots: Path, ks: tuple[int, ...],
             tag_ks: tuple[int, ...]) -> None:
    """CZSL, GZSL (U, S, H, AUSUC) and Hit@k of a trained model (multi-label data: tag mAP and
    P/R/F1@k for ZSL and GZSL); writes metrics JSON and plots."""
    import json

    from pipeline.evaluate import evaluate_files, headline

    result = evaluate_files(model_file, features, semantics, metrics, plots, candidate_sets, clip_features, ks, tag_ks)
    click.echo(json.dumps(result, indent=2))
    click.echo(headline(result))


@cli.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--features", type=click.Path(path_type=Path), default=None,
              help="A feature store to label instead of image files (all its images, or --split).")
@click.option("--split", default=None, help="With --features: only this split (e.g. test_unseen).")
@click.option("--model-file", type=click.Path(path_type=Path), default=Path("models/model.pt"), show_default=True)
@click.option("--semantics", type=click.Path(path_type=Path), default=None,
              help="The semantics file the model was trained with [default: the one its checkpoint records].")
@click.option("--classes", default=None,
              help="Candidate class names: a text file (one per line) or a comma list [default: the model's classes].")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--calibration/--no-calibration", default=True, show_default=True,
              help="Penalise the model's seen classes by its gamma when the candidates mix seen and new classes.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Write the predictions here (.csv or .json) [default: CSV on stdout].")
@click.option("--backbone", default=None, callback=_backbone,
              help="For image files, the three backbone options default to those the model's features were "
                   f"extracted with (recorded in its checkpoint); one given must agree with them. {BACKBONE_NAMES}.")
@click.option("--pretrained", default=None)
@click.option("--image-size", type=click.IntRange(min=16), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images a batch when extracting them [default: as extract's].")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--device", default="auto", show_default=True)
def predict(images: tuple[Path, ...], features: Path | None, split: str | None, model_file: Path,
            semantics: Path | None, classes: str | None, top_k: int, calibration: bool, output: Path | None,
            backbone: str | None, pretrained: str | None, image_size: int | None,
            batch_size: int | None, workers: int, device: str) -> None:
    """Label images (files, folders, or a feature store) with any class names: top-k classes and scores."""
    from pipeline.predict import predict as run_predict
    from pipeline.predict import read_class_names

    result = run_predict(model_file, features=features, split=split, images=images,
                         classes=read_class_names(classes) if classes else None, semantics=semantics, k=top_k,
                         calibrate=calibration, backbone=backbone, pretrained=pretrained,
                         image_size=image_size, batch_size=batch_size, workers=workers, device=device)
    for candidate in result.candidates:  # how each name given was read, when not as it is
        if candidate.route != "class" or candidate.label != candidate.name:
            click.echo(candidate.describe(), err=True)
    if output is None:
        click.echo(result.text("csv"), nl=False)
    else:
        result.write(output)
    click.echo(result.summary() + (f"; written to {output}" if output else ""), err=output is None)


@cli.command()
@click.argument("sources", nargs=-1)
@click.option("--table", type=click.Path(path_type=Path), default=Path("comparison.md"), show_default=True,
              help="Markdown table to write (also printed).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=Path("comparison.csv"), show_default=True)
@click.option("--plot", type=click.Path(path_type=Path), default=Path("comparison.png"), show_default=True,
              help="Overlay of the seen-unseen curves, operating points marked.")
@click.option("--class-table", type=click.Path(path_type=Path), default=Path("comparison_classes.md"),
              show_default=True, help="Each run's worst unseen classes and what they are mistaken for.")
@click.option("--class-plot", type=click.Path(path_type=Path), default=Path("comparison_classes.png"),
              show_default=True, help="The same as bars, one panel per run.")
def compare(sources: tuple[str, ...], table: Path, csv_path: Path, plot: Path, class_table: Path,
            class_plot: Path) -> None:
    """Compare runs: metrics files (FILE or FILE::PLOTS_DIR) or git revisions / DVC experiment names
    [default: the workspace and every DVC experiment] as one table (mean ± std of runs differing only in
    seed), one overlay plot and a per-class view."""
    from pipeline.compare import compare as run_compare
    from pipeline.compare import markdown

    runs = run_compare(list(sources), table, csv_path, plot, class_table, class_plot)
    click.echo(markdown(runs), nl=False)
    written = [table, csv_path, plot] + ([class_table, class_plot] if any(r.classes for r in runs) else [])
    click.echo(f"{len(runs)} runs: {', '.join(map(str, written))}", err=True)


@cli.command("import-xlsa17")
@click.option("--res101", type=click.Path(path_type=Path), required=True, help="xlsa17 res101.mat")
@click.option("--splits", type=click.Path(path_type=Path), required=True, help="xlsa17 att_splits.mat")
@click.option("--output", type=click.Path(path_type=Path), required=True)
@click.option("--dataset", default=None, help="Dataset name [default: att_splits.mat's folder name].")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
def import_xlsa17_cmd(res101: Path, splits: Path, output: Path, dataset: str | None, dtype: str) -> None:
    """Import the benchmark's precomputed ResNet-101 features into a feature file."""
    from pipeline.xlsa17 import import_xlsa17

    import_xlsa17(res101, splits, output, dataset=dataset, dtype=dtype)
    click.echo(f"{output}: imported (python cli.py info {output})")


def main() -> None:
    """The ``zsl`` console script."""
    cli()
