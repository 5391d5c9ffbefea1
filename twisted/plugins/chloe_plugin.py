"""The ``twistd chloe`` plugin: a ServiceMaker and nothing else, so that
``twistd --help`` imports nothing heavy."""

from twisted.application.service import ServiceMaker

chloe = ServiceMaker(
    "Chloe",
    "chloed.tap",
    "A realtime web server: browsers over WebSocket, SSE, long-poll and JSONP; "
    "your app over HTTP POST.",
    "chloe",
)
