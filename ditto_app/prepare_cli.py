"""`ditto prepare`: talking-head videos -> data_info.json, per-video features, data_list.json, preload pickle.

    ditto prepare --videos clips/ --work data/ --data-info data/data_info.json \\
        --out-list data/data_list.json --out-preload data/data_preload.pkl --weights /data/ditto --workers 4

With an existing data_info.json (the reference's format), drop --videos/--work. Finished videos are skipped, so an
interrupted run continues where it stopped; a video that fails is reported with the reason and left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ditto_app.cli import add_model_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prepare", help="prepare training data from talking-head videos",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, help="folder of 25 fps videos with speech (creates data_info.json)")
    p.add_argument("--work", type=Path, help="folder for the per-video outputs (with --videos)")
    p.add_argument("--data-info", type=Path, required=True,
                   help="data_info.json to read, or to write when --videos is given")
    p.add_argument("--out-list", type=Path, required=True, help="data_list.json to write")
    p.add_argument("--out-preload", type=Path, help="preload pickle to write (for `ditto train --data_preload`)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default: %(default)s)")
    p.add_argument("--emotion", choices=("auto", "hsemotion", "neutral"), default="auto",
                   help="emotion classifier: HSEmotion when installed (auto), required, or all Neutral")
    p.add_argument("--no-flip", action="store_true", help="do not add horizontally mirrored copies")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ditto_app.synthetic import profile_of, resolve_weights
    from ditto_training.formats import DataError, DataInfo, build_preload, gather_data_list, save_preload
    from ditto_training.prepare import PrepareSettings, prepare_all, write_report

    try:
        if args.videos is not None:
            if args.work is None:
                raise DataError("--videos needs --work (the folder for the per-video outputs)")
            info = DataInfo.from_folder(args.videos, args.work)
            info.save(args.data_info)
            print(f"wrote {args.data_info} ({len(info.videos)} videos)")
        else:
            info = DataInfo.load(args.data_info)
        if not info.videos:
            raise DataError(f"{args.data_info}: no videos listed")
    except DataError as err:
        print(f"error: {err}")
        return 2
    weights = resolve_weights(args.weights, args.profile)
    profile = profile_of(weights, args.profile)
    settings = PrepareSettings(flip=not args.no_flip)
    results = prepare_all(info, weights, profile, args.device, args.emotion, settings, max(1, args.workers),
                          progress=not args.no_progress)
    report = write_report(results, args.out_list.with_name(args.out_list.stem + ".report.json"))
    notes = sorted({n for r in results for n in r.notes})
    for n in notes:
        print(f"note: {n}")
    ok = [r.name for r in results if r.status != "failed"]
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"failed: {r.name}: {r.reason}")
    print(f"{sum(r.status == 'done' for r in results)} prepared, {sum(r.status == 'skipped' for r in results)} "
          f"already done, {len(failed)} failed (details in {report})")
    if not ok:
        print("error: no video was prepared; nothing to list")
        return 1
    items, skipped = gather_data_list(info, with_flip=settings.flip, only=ok)
    for s in skipped:
        print(f"note: {s}")
    args.out_list.parent.mkdir(parents=True, exist_ok=True)
    import json

    args.out_list.write_text(json.dumps(items, indent=2))
    print(f"wrote {args.out_list} ({len(items)} entries)")
    if args.out_preload is not None and items:
        preload = build_preload(items)
        save_preload(preload, args.out_preload)
        print(f"wrote {args.out_preload} ({len(preload[0])} videos, {len(preload[1])} clips)")
    return 1 if failed else 0
