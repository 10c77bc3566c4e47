"""``pulse-ext convert`` and ``pulse-ext info``: the checkpoint subcommands of :mod:`pulse_ext.cli`."""
import json
import os

from pulse_ext.checkpoints import build_generator, read_checkpoint, write_converted


def describe_generator(G, checkpoint, path):
    """Summary of a loaded generator as a JSON-friendly dict (what ``pulse-ext info`` prints)."""
    mapping = G.init_kwargs.get("mapping_kwargs", {})
    return {
        "checkpoint": str(path),
        "format": checkpoint.describe_source(),
        "resolution": G.img_resolution,
        "img_channels": G.img_channels,
        "z_dim": G.z_dim,
        "w_dim": G.w_dim,
        "num_ws": G.num_ws,
        "mapping_layers": G.mapping.num_layers,
        "mapping_lr_multiplier": mapping.get("lr_multiplier", 0.01),
        "channels": {str(res): ch for res, ch in G.synthesis.channels_dict.items()},
        "parameters": sum(p.numel() for p in G.parameters()),
        "config": G.init_kwargs,
        "pulse_latent_stats": [f"{r.get('num_samples')} samples, seed {r.get('seed')}"
                               for r in checkpoint.latent_stats],
        "notes": list(checkpoint.notes),
    }


def _add_info_arguments(parser):
    parser.add_argument("checkpoint", help="checkpoint file (.pkl, .pt, .safetensors) or 'default'")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _run_info(args):
    checkpoint = read_checkpoint(args.checkpoint)
    info = describe_generator(build_generator(checkpoint), checkpoint, args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    channels = "  ".join(f"{res}:{ch}" for res, ch in info["channels"].items())
    print(f"checkpoint      {info['checkpoint']}")
    print(f"format          {info['format']}")
    print(f"resolution      {info['resolution']}x{info['resolution']}, {info['img_channels']} channels")
    print(f"z_dim / w_dim   {info['z_dim']} / {info['w_dim']}")
    print(f"num_ws          {info['num_ws']}")
    print(f"mapping layers  {info['mapping_layers']} (lr_multiplier {info['mapping_lr_multiplier']})")
    print(f"channels        {channels}  (resolution:channels)")
    print(f"parameters      {info['parameters']:,}")
    stored = "; ".join(info["pulse_latent_stats"]) or "none stored (fitted when a search starts)"
    print(f"PULSE stats     {stored}")
    for note in info["notes"]:
        print(f"note            {note}")
    return 0


def _add_convert_arguments(parser):
    parser.add_argument("input", help="checkpoint to convert (NVIDIA .pkl, rosinality .pt, pulse_ext .safetensors)")
    parser.add_argument("output", help="where to write the pulse_ext .safetensors file")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--no-latent-stats", action="store_true",
                        help="do not fit and store PULSE's mapping statistics (100k mapping passes; stored, they "
                             "save that fit on every later search with this file)")


def _run_convert(args):
    from pulse_ext.cli import UsageError

    if not args.output.endswith(".safetensors"):
        raise UsageError(f"output must end in .safetensors, got {args.output}")
    if os.path.exists(args.output) and not args.overwrite:
        raise UsageError(f"{args.output} exists (pass --overwrite to replace it)")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"output directory does not exist: {out_dir}")
    checkpoint = read_checkpoint(args.input)
    G = write_converted(checkpoint, args.output, latent_stats=not args.no_latent_stats)
    params = sum(p.numel() for p in G.parameters())
    print(f"wrote {args.output} ({G.img_resolution}px generator, {params:,} parameters, "
          f"from {checkpoint.describe_source()})")
    return 0


INFO = ("show a checkpoint's architecture, size and format", _add_info_arguments, _run_info)
CONVERT = ("convert a checkpoint to pulse_ext's .safetensors format", _add_convert_arguments, _run_convert)
