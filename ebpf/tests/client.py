"""Test client for svcplane-ebpf: runs inside the test's cgroup and network namespace.

Prints one line per result; the Rust tests parse them.
"""
import socket
import sys
import time


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp_once(host, port):
    with socket.create_connection((host, port), timeout=2) as s:
        peer = s.getpeername()[0]
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
        return data.decode().strip(), peer


def main():
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arg = sys.argv[4] if len(sys.argv) > 4 else "1"
    if cmd == "tcp":
        for _ in range(int(arg)):
            try:
                name, peer = tcp_once(host, port)
                print(f"{name} {peer}", flush=True)
            except OSError as e:
                print(f"ERR {e}", flush=True)
    elif cmd == "udp-sendto":
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.settimeout(2)
        for i in range(int(arg)):
            try:
                s.sendto(f"m{i}".encode(), (host, port))
                data, addr = s.recvfrom(100)
                print(f"{data.decode().split(':')[0]} {addr[0]} {addr[1]}", flush=True)
            except OSError as e:
                print(f"ERR {e}", flush=True)
    elif cmd == "udp-connect":
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, port))
        peer = s.getpeername()
        print(f"PEER {peer[0]} {peer[1]}", flush=True)
        for i in range(int(arg)):
            try:
                s.send(f"m{i}".encode())
                data, addr = s.recvfrom(100)
                print(f"{data.decode().split(':')[0]} {addr[0]} {addr[1]}", flush=True)
            except OSError as e:
                print(f"ERR {e}", flush=True)
    elif cmd == "udp-sendto-wait":
        # One socket: a datagram, then (once the file named by arg exists) another.
        import os
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.settimeout(2)
        for i in range(2):
            if i == 1:
                deadline = time.monotonic() + 30
                while not os.path.exists(arg) and time.monotonic() < deadline:
                    time.sleep(0.01)
            try:
                s.sendto(f"m{i}".encode(), (host, port))
                data, addr = s.recvfrom(100)
                print(f"{data.decode().split(':')[0]} {addr[0]} {addr[1]}", flush=True)
            except OSError as e:
                print(f"ERR {e}", flush=True)
    elif cmd == "udp-connect-wait":
        # A connected socket: a datagram; once the file named by arg exists another one;
        # then, as an application does after an error, a new connected socket and one more.
        import os
        s = socket.socket(family(host), socket.SOCK_DGRAM)
        s.settimeout(2)
        s.connect((host, port))
        for i in range(3):
            if i == 1:
                deadline = time.monotonic() + 30
                while not os.path.exists(arg) and time.monotonic() < deadline:
                    time.sleep(0.01)
            if i == 2:
                s.close()
                s = socket.socket(family(host), socket.SOCK_DGRAM)
                s.settimeout(2)
                s.connect((host, port))
            try:
                s.send(f"m{i}".encode())
                data, addr = s.recvfrom(100)
                print(f"{data.decode().split(':')[0]} {addr[0]} {addr[1]}", flush=True)
            except OSError as e:
                print(f"ERR {e}", flush=True)
    elif cmd == "load":
        # TCP connections until the file named by arg exists (at most 60 s); then
        # "ok N fail M [first errors]".
        ok = fail = 0
        errors = []
        import os
        deadline = time.monotonic() + 60
        while not os.path.exists(arg) and time.monotonic() < deadline:
            try:
                tcp_once(host, port)
                ok += 1
            except OSError as e:
                fail += 1
                if len(errors) < 3:
                    errors.append(str(e))
        print(f"ok {ok} fail {fail} {errors[:3]}", flush=True)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
