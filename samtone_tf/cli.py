"""The ``samtone-tf`` command line."""

import argparse
import json
import sys


def _info(args):
    import tensorflow as tf

    import samtone_tf
    from samtone_tf import strategy as strategy_lib

    info = {
        "samtone_tf": samtone_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": samtone_tf.KERAS_VERSION,
        "keras_generation": 3 if samtone_tf.IS_KERAS3 else 2,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "tf_config_workers": strategy_lib.num_workers_in_tf_config(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:18s} {value}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="samtone-tf",
        description="Train, evaluate and export dual-encoder retrievers with SamToNe / DANCE "
                    "contrastive losses.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, Keras generation and devices in use")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
