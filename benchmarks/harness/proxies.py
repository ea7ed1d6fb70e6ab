"""
TCP proxies of the harness between rqworker processes and PostgreSQL or Redis, for the faults a server cannot be
asked to make on cue: a reply lost after the server committed (``ReplyCutter``), every connection cut for a while
(``DatabaseGate``), a server that accepts connections and never answers (``RedisGate``).
"""

import re
import socket
import struct
import threading
import uuid

__all__ = (
    'DatabaseGate',
    'LoopbackProxy',
    'RedisGate',
    'ReplyCutter',
    'database_server',
)


# PostgreSQL wire protocol: the request codes of the untyped first packets, and where a statement's text is.
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
# A statement that moves a job to running: the plugin's claim (``UPDATE core_job SET status = 'running' ...`` in its
# CTE) and stock NetBox's ``Job.start()`` (a full-row ``UPDATE "core_job" SET ... "status" = 'running' ...``).
# Django's psycopg backend binds parameters on the client side by default, so the values are in the statement text.
START_STATEMENT = re.compile(rb'UPDATE\s+"?core_job"?\s+SET\s.*?"?status"?\s*=\s*\'running\'', re.DOTALL)
# psycopg renders a UUID as 32 hex digits (``'f883...3804'::uuid``); the dashed form is accepted too.
UUID_LITERAL = re.compile(rb"'([0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})'")


def database_server():
    """(host, port) of the PostgreSQL server of the harness's own connection: what a proxy of the harness fronts."""
    from django.db import connection

    settings = connection.settings_dict
    return settings['HOST'] or '127.0.0.1', int(settings['PORT'] or 5432)


def _recv_exact(sock, count):
    data = b''
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class LoopbackProxy:
    """
    A TCP proxy on a free loopback port in front of ``upstream`` (host, port); what crosses it is the subclass's
    ``_accept()``. ``stop()`` closes the port and every connection through it.
    """

    def __init__(self, upstream):
        self.upstream = upstream
        self.port = None
        self.lock = threading.Lock()
        self._listener = None
        self._sockets = []
        self._stopping = threading.Event()

    def start(self):
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self):
        self._stopping.set()
        self._listener.close()
        self._cut_all()

    def upstream_ports(self):
        """The local ports of this proxy's connections to the server (``client_port`` in ``pg_stat_activity``)."""
        with self.lock:
            sockets = list(self._sockets)
        ports = []
        for sock in sockets:
            try:
                if sock.getpeername()[1] == self.upstream[1]:
                    ports.append(sock.getsockname()[1])
            except OSError:
                pass
        return ports

    def _cut_all(self):
        with self.lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            self._close(sock)

    @staticmethod
    def _close(sock):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self):
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._admit():
                self._close(client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self._sockets += [client, server]
            self._serve(client, server)

    def _admit(self):
        """Whether a new connection is let through (else it is closed at once)."""
        return True

    def _serve(self, client, server):
        """Start whatever forwards the bytes of one connection both ways."""
        raise NotImplementedError


class ReplyCutter(LoopbackProxy):
    """
    A TCP proxy between rqworker processes and PostgreSQL that forwards every byte both ways, except that for the
    first statement moving each of ``targets`` (job UUIDs) to running, it lets the server execute and commit it, reads
    the server's whole reply, and then closes the client's connection instead of forwarding the reply: the worker's
    connection dies after the commit and before the reply, as when a network path or a pooler fails at that instant.

    It answers an SSL or GSSAPI encryption request with 'N' itself, so that it sees the protocol in clear whatever
    ``sslmode`` the client asks for. Statements are found in simple-protocol Query and extended-protocol Parse
    messages. A reply is cut only when the server says the statement succeeded and no transaction is open
    (ReadyForQuery status 'I', no ErrorResponse): the statement committed. The job UUID is looked for in the statement
    text, where Django's default client-side binding puts it; with ``server_side_binding`` the values travel in Bind
    messages, nothing is cut, and the scenario says so (``replies_cut`` 0).
    """

    def __init__(self, upstream, targets, pattern=START_STATEMENT):
        super().__init__(upstream)
        self.targets = {uuid.UUID(str(u)) for u in targets}
        self.pattern = pattern
        self.cut = {}  # job UUID -> the start of the statement whose reply was lost
        self.connections = 0

    def _serve(self, client, server):
        with self.lock:
            self.connections += 1
        state = {'armed': None}
        threading.Thread(target=self._client_to_server, args=(client, server, state), daemon=True).start()
        threading.Thread(target=self._server_to_client, args=(server, client, state), daemon=True).start()

    def _arm(self, state, text):
        if not self.pattern.search(text):
            return
        with self.lock:
            for found in map(uuid.UUID, (literal.decode() for literal in UUID_LITERAL.findall(text))):
                if found in self.targets and found not in self.cut:
                    state['armed'] = (found, text[:60].decode(errors='replace'))
                    return

    def _client_to_server(self, client, server, state):
        try:
            # Untyped packets first: encryption requests (answered here), then the startup or cancel packet.
            while True:
                head = _recv_exact(client, 8)
                if head is None:
                    return
                length, code = struct.unpack('!ii', head)
                rest = _recv_exact(client, length - 8) if length > 8 else b''
                if rest is None:
                    return
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    client.sendall(b'N')
                    continue
                server.sendall(head + rest)
                if code == CANCEL_REQUEST:
                    return
                break
            while True:
                head = _recv_exact(client, 5)
                if head is None:
                    return
                kind, length = head[:1], struct.unpack('!i', head[1:])[0]
                body = _recv_exact(client, length - 4)
                if body is None:
                    return
                if kind == b'Q':
                    self._arm(state, body[:-1])
                elif kind == b'P':
                    self._arm(state, body[body.index(b'\0') + 1:].split(b'\0', 1)[0])
                server.sendall(head + body)
        except OSError:
            pass
        finally:
            self._close(client)
            self._close(server)

    def _server_to_client(self, server, client, state):
        held = []
        try:
            while True:
                head = _recv_exact(server, 5)
                if head is None:
                    return
                body = _recv_exact(server, struct.unpack('!i', head[1:])[0] - 4)
                if body is None:
                    return
                if state['armed'] is None:
                    client.sendall(head + body)
                    continue
                held.append(head + body)
                if head[:1] != b'Z':
                    continue
                failed = any(message[:1] == b'E' for message in held)
                if body[:1] == b'I' and not failed:
                    with self.lock:
                        self.cut[state['armed'][0]] = state['armed'][1]
                    return  # the reply is dropped; finally closes both connections
                if failed:
                    state['armed'] = None
                client.sendall(b''.join(held))
                held = []
        except OSError:
            pass
        finally:
            self._close(client)
            self._close(server)


class DatabaseGate(LoopbackProxy):
    """
    A TCP proxy between rqworker processes and PostgreSQL that can go down: ``down()`` cuts every connection through
    it and refuses new ones (accepted, then closed at once) until ``up()``, which is what the workers see of a
    PostgreSQL restart, a failover or a network partition. The harness keeps its own direct connection. Unlike a real
    restart, the server's start time does not change: the workers' loops must tell the outage by themselves.
    """

    def __init__(self, upstream):
        super().__init__(upstream)
        self.is_down = False

    def down(self):
        with self.lock:
            self.is_down = True
        self._cut_all()

    def up(self):
        with self.lock:
            self.is_down = False

    def _admit(self):
        return not self.is_down

    def _serve(self, client, server):
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _passes(self):
        """Whether what crosses the gate now reaches the other side (else it is read and dropped)."""
        return True

    def _pump(self, source, target):
        try:
            while data := source.recv(65536):
                if self._passes():
                    target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            self._close(sock)


class RedisGate(DatabaseGate):
    """
    A ``DatabaseGate`` in front of Redis that can also go silent: ``silence()`` keeps every connection open and lets
    nothing through either way, and accepts new connections that get no answer either (a hung server, a blackholed
    route: each command waits out its client's timeout). ``up()`` cuts the connections that went silent (their
    clients are mid-command, their streams out of step) and lets traffic through again.
    """

    def __init__(self, upstream):
        super().__init__(upstream)
        self.is_silent = False

    def silence(self):
        with self.lock:
            self.is_silent = True

    def up(self):
        with self.lock:
            was_silent, self.is_silent, self.is_down = self.is_silent, False, False
        if was_silent:
            self._cut_all()

    def _passes(self):
        return not self.is_silent
