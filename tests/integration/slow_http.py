"""A throttled HTTP file server (for progress tests): serves one file at a
given rate.  ``python slow_http.py FILE PORT BYTES_PER_SECOND``"""

import os
import sys

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

PATH, PORT, RATE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
STEP = 0.05


class Slow(Resource):
    isLeaf = True

    def render_GET(self, request):
        size = os.path.getsize(PATH)
        request.setHeader(b"content-length", str(size).encode())
        f = open(PATH, "rb")

        def send():
            data = f.read(int(RATE * STEP))
            if not data:
                loop.stop()
                f.close()
                request.finish()
                return
            request.write(data)

        loop = LoopingCall(send)
        loop.start(STEP)
        request.notifyFinish().addErrback(
            lambda _: loop.running and loop.stop())
        return NOT_DONE_YET


reactor.listenTCP(PORT, Site(Slow()), interface="127.0.0.1")
reactor.run()
