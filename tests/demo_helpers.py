"""Starting the demo in-process for tests (and the docs' screenshot): a DemoApp with the embedded
default generator behind a DemoServer on a free loopback port, served from a thread."""
import threading
from contextlib import contextmanager

import torch


@contextmanager
def running_demo(limits=None, aligner=None, align_unavailable="alignment not set up in this test",
                 preview_every=5):
    from pulse_ext.checkpoints import load_generator
    from pulse_ext.demo import DemoApp, DemoServer

    generators = {"default": load_generator("default", device="cpu")}
    app = DemoApp(generators, torch.device("cpu"), limits, aligner=aligner, align_unavailable=align_unavailable,
                  preview_every=preview_every)
    server = DemoServer(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    app.start()
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        app.close()
        thread.join(5)
