"""A TCP proxy that counts round trips: how many times a client starts sending
again after the server has answered (a pipeline or a batch sent without waiting
is one).  Protocol-blind, so the same count works for PostgreSQL (the floor, our
sqlalchemy backend, procrastinate) and anything else; the connection is routed
through it only in the process that measures round trips, never for timings.
"""
import select
import socket
import threading


class RoundTripProxy:
    def __init__(self, host, port):
        self.target = (host, port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.turns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        with self.lock:
            self.turns = 0

    def _accept(self):
        while True:
            client, _ = self.lsock.accept()
            server = socket.create_connection(self.target)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, client, server):
        last = None  # who sent last on this connection
        try:
            while True:
                readable, _, _ = select.select([client, server], [], [])
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        if last is not client:
                            with self.lock:
                                self.turns += 1
                        server.sendall(data)
                    else:
                        client.sendall(data)
                    last = s
        except OSError:
            pass
        finally:
            client.close()
            server.close()
