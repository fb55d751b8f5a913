"""Keep TensorFlow's C++ start-up and converter log lines out of notebook outputs, and let everything else through.

TensorFlow writes them to file descriptor 2 from C++, before and regardless of TF_CPP_MIN_LOG_LEVEL
(absl logs everything until it is initialised), so a notebook reader on GitHub sees `E0000 ... cuInit`
and oneDNN notes. Here descriptor 2 is replaced by a pipe whose lines are filtered by a thread.
"""

import logging
import os
import re
import threading

# glog/absl lines ("I0000 00:00:1795618144.407888   16804 port.cc:153] ..."), absl's pre-init notice, the
# continuation line of cpu_feature_guard's note, and the TFLite converter's bare summary line.
NOISE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions:"
    rb"|fully_quantize: \d"
    rb"|INFO: Created TensorFlow Lite)"
)
_installed = False


def hide_native_logs():
    """From now on, drop TensorFlow's native log lines written to stderr in this process; other lines pass.

    Call it before TensorFlow is imported. TensorFlow's Python logger is also kept to errors.
    """
    global _installed
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _installed:
        return
    # A filter, not a level: the converter sets the logger's level itself and logs "Assets written to ..." at INFO.
    logging.getLogger("tensorflow").addFilter(lambda record: record.levelno >= logging.ERROR)
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    threading.Thread(target=_forward, args=(read_end, original), daemon=True, name="native-log-filter").start()
    _installed = True


def _forward(read_end, original):
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
            try:
                if kept:
                    os.write(original, kept)
            except OSError:  # keep draining the pipe, so that writers to stderr never block
                pass
        if pending and not NOISE.match(pending):
            os.write(original, pending)
