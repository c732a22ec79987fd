"""CoWeSt web app: read config, build the service, build the UI, launch.

    python app.py            # http://127.0.0.1:7860 on the embedded defaults
"""

from __future__ import annotations

import logging


def main() -> None:
    from cowest_app.config import from_env
    from cowest_app.loop.control import build_control
    from cowest_app.loop.restore import restore_from_hub
    from cowest_app.serving.service import CollabService
    from cowest_app.serving.ui import CSS, HEAD, build_ui

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = from_env()
    logging.getLogger("cowest").info("config: %s", config)
    restored = restore_from_hub(config)  # a wiped disk (a Space restart) gets its adapters and log back first
    service = CollabService.build(config)
    control = build_control(config, service, restored.summary() if restored.changed else None)
    demo = build_ui(service, control)
    # Bounded: under overload a request is refused ("Queue is full") instead of piling up in memory.
    demo.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_max_size)
    try:
        demo.launch(server_name=config.host, server_port=config.port, show_error=True, css=CSS, head=HEAD)
    finally:
        control.shutdown()


if __name__ == "__main__":
    main()
