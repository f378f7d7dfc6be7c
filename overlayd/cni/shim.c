/* overlayd-cni, the executable a container runtime runs: a C front for overlayd.cni.client.
 *
 * A runtime starts one plugin process per container and command, so the start of
 * that process is most of a CNI call's cost: ~1 ms for this, ~30 ms for Python.
 * This program only forwards the call; the daemon parses it (overlayd.cni.handler):
 *
 *   request  {"cmd": "cni.exec", "args": {"env": {CNI_* as they are}, "stdin_hex": "...",
 *             "socket": <the socket this was built for>, "reply": "hex"}}\n
 *   reply    {"ok": true, "result": {"exit": N, "stdout_hex": "..."}}\n   (exactly this shape)
 *
 * and prints stdout, exiting with N. Everything else goes to the Python client,
 * exec'd with the same environment and the same stdin (the bytes read so far,
 * then the rest, through a memfd), so it stays the one implementation of the
 * spec's edge cases: VERSION, a daemon that cannot be reached or answers
 * anything else (an error, or "fallback" when the config names another socket
 * or is no JSON object), a config too large for one request, environment
 * variables that are not ASCII or are given twice. Every CNI command is
 * idempotent, so a call the daemon answered unreadably may be made again there.
 *
 * Built by `overlayctl cni install` (overlayd.cni.build) with these string macros:
 *   OVERLAYD_SOCKET       the control socket the conflist names
 *   OVERLAYD_SOCKET_JSON  the same as a JSON string literal, quotes included
 *   OVERLAYD_PYTHON       the Python interpreter of the fallback
 *   OVERLAYD_CLIENT       the code it runs with -I -S -c (imports overlayd.cni.client)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#if !defined(OVERLAYD_SOCKET) || !defined(OVERLAYD_SOCKET_JSON) || !defined(OVERLAYD_PYTHON) || \
    !defined(OVERLAYD_CLIENT)
#error "built by overlayctl cni install: OVERLAYD_SOCKET, _SOCKET_JSON, _PYTHON and _CLIENT are needed"
#endif

#define MAX_STDIN 32768       /* hex doubles it: more cannot fit in one request */
#define MAX_REQUEST 65536     /* overlayd.api.protocol.MAX_REQUEST_BYTES, without the newline */
#define MAX_REPLY 65536
#define MAX_CONFIG (1 << 20)  /* overlayd.cni.client.MAX_CONFIG_BYTES: it reads at most one byte more */
#define MAX_ENV 32
#define TIMEOUT_S 60
#define ERR_IO 5

extern char **environ;

static char in[MAX_STDIN];
static size_t in_len;
static int in_read;       /* stdin was read (into in[]) */
static int in_complete;   /* ... up to its end */
static char req[MAX_REQUEST + 1];
static size_t req_len;
static char rep[MAX_REPLY + 1];
static const char hexdigits[] = "0123456789abcdef";

/* The last resort, when even the Python client cannot run: the spec's error JSON, newest version. */
static void die(const char *what, int err) {
    char msg[512], out[1200];
    size_t n = 0;
    int len = snprintf(msg, sizeof msg, "overlayd-cni: %s: %s", what, strerror(err));
    if (len < 0) len = 0;
    if ((size_t)len >= sizeof msg) len = sizeof msg - 1;
    n += (size_t)snprintf(out, sizeof out, "{\"cniVersion\": \"1.1.0\", \"code\": %d, \"msg\": \"", ERR_IO);
    for (int i = 0; i < len && n + 8 < sizeof out; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c == '"' || c == '\\') { out[n++] = '\\'; out[n++] = (char)c; }
        else if (c < 0x20 || c >= 0x7f) n += (size_t)snprintf(out + n, sizeof out - n, "\\u%04x", c);
        else out[n++] = (char)c;
    }
    n += (size_t)snprintf(out + n, sizeof out - n, "\"}\n");
    if (n >= sizeof out) n = sizeof out - 1;
    for (size_t done = 0; done < n;) {
        ssize_t w = write(1, out + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t)w;
    }
    _exit(1);
}

static ssize_t read_some(int fd, void *buf, size_t n) {
    for (;;) {
        ssize_t r = read(fd, buf, n);
        if (r >= 0 || errno != EINTR) return r;
    }
}

static int write_all(int fd, const char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR) continue;
        if (w == 0) errno = EIO;
        if (w <= 0) return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Run the Python client in this process, with stdin as it was given to us. */
static void fallback(void) {
    if (in_read) {
        int fd = memfd_create("overlayd-cni-stdin", MFD_CLOEXEC);
        if (fd < 0) die("cannot hand the config to the Python client (memfd_create)", errno);
        if (write_all(fd, in, in_len) < 0) die("cannot hand the config to the Python client", errno);
        /* The rest of an oversized config, as far as the client reads it (rep[] is free now). */
        for (size_t total = in_len; !in_complete && total <= MAX_CONFIG;) {
            ssize_t r = read_some(0, rep, sizeof rep);
            if (r < 0) die("cannot read the network config on stdin", errno);
            if (r == 0) break;
            if (write_all(fd, rep, (size_t)r) < 0) die("cannot hand the config to the Python client", errno);
            total += (size_t)r;
        }
        if (lseek(fd, 0, SEEK_SET) != 0) die("cannot hand the config to the Python client (lseek)", errno);
        if (dup2(fd, 0) != 0) die("cannot hand the config to the Python client (dup2)", errno);
        close(fd);
    }
    char *argv[] = {OVERLAYD_PYTHON, "-I", "-S", "-c", OVERLAYD_CLIENT, NULL};
    execve(argv[0], argv, environ);
    die("cannot run the Python client " OVERLAYD_PYTHON, errno);
}

static void read_stdin(void) {
    in_read = 1;
    while (in_len < sizeof in) {
        ssize_t r = read_some(0, in + in_len, sizeof in - in_len);
        if (r < 0 && errno == EBADF) r = 0;  /* no stdin: no config, as for the Python client */
        if (r < 0) die("cannot read the network config on stdin", errno);
        if (r == 0) {
            in_complete = 1;
            return;
        }
        in_len += (size_t)r;
    }
    /* Full: one more byte would not fit in a request; the Python client answers that. */
}

static void put(const char *s, size_t n) {
    if (n > sizeof req - 1 - req_len) fallback();  /* too large for one request */
    memcpy(req + req_len, s, n);
    req_len += n;
}

static void puts_(const char *s) { put(s, strlen(s)); }

/* s[0..n) as the inside of a JSON string; non-ASCII goes to the Python client (it decodes with "replace"). */
static void put_json_chars(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        if (c >= 0x80) fallback();
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(esc, 6);
        } else {
            put((const char *)&c, 1);
        }
    }
}

static void build_request(void) {
    const char *seen[MAX_ENV];
    size_t seen_len[MAX_ENV], count = 0;
    puts_("{\"cmd\": \"cni.exec\", \"args\": {\"env\": {");
    for (char **e = environ; *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, "CNI_", 4) != 0 || eq == NULL) continue;
        size_t name_len = (size_t)(eq - *e);
        for (size_t i = 0; i < count; i++)
            if (seen_len[i] == name_len && memcmp(seen[i], *e, name_len) == 0) fallback();  /* given twice */
        if (count == MAX_ENV) fallback();
        seen[count] = *e;
        seen_len[count] = name_len;
        if (count++) puts_(", ");
        puts_("\"");
        put_json_chars(*e, name_len);
        puts_("\": \"");
        put_json_chars(eq + 1, strlen(eq + 1));
        puts_("\"");
    }
    puts_("}, \"stdin_hex\": \"");
    if (in_len * 2 > sizeof req - 1 - req_len) fallback();
    for (size_t i = 0; i < in_len; i++) {
        unsigned char c = (unsigned char)in[i];
        req[req_len++] = hexdigits[c >> 4];
        req[req_len++] = hexdigits[c & 15];
    }
    puts_("\", \"socket\": " OVERLAYD_SOCKET_JSON ", \"reply\": \"hex\"}}");
    req[req_len++] = '\n';  /* room kept: req[] is one longer than a request line */
}

/* Send the request, read the one reply line into rep[]; its length, or -1 (then: the Python client). */
static ssize_t ask(void) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (sizeof OVERLAYD_SOCKET > sizeof addr.sun_path) return -1;
    memcpy(addr.sun_path, OVERLAYD_SOCKET, sizeof OVERLAYD_SOCKET);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) return -1;
    struct timeval timeout = {.tv_sec = TIMEOUT_S};
    ssize_t len = -1;
    if (setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) != 0 ||
        setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0)
        goto out;
    int r = connect(sock, (struct sockaddr *)&addr, sizeof addr);
    if (r != 0 && errno == EINTR) {  /* a stop signal; the connection may go on: once more decides */
        r = connect(sock, (struct sockaddr *)&addr, sizeof addr);
        if (r != 0 && errno == EISCONN) r = 0;
    }
    if (r != 0) goto out;  /* EALREADY included: the Python client tries again */
    for (size_t done = 0; done < req_len;) {
        ssize_t w = send(sock, req + done, req_len - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) goto out;
        done += (size_t)w;
    }
    size_t got = 0;
    while (got == 0 || rep[got - 1] != '\n') {
        if (got == MAX_REPLY) goto out;
        ssize_t n = read_some(sock, rep + got, MAX_REPLY - got);
        if (n <= 0) goto out;
        got += (size_t)n;
    }
    len = (ssize_t)got;
out:
    close(sock);
    return len;
}

static int unhex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* rep[0..len) must be exactly the success reply; its stdout is decoded in place. */
static int parse_reply(size_t len, size_t *out_len) {
    static const char head[] = "{\"ok\": true, \"result\": {\"exit\": ";
    static const char mid[] = ", \"stdout_hex\": \"";
    static const char tail[] = "\"}}\n";
    size_t p = sizeof head - 1;
    int code = 0, digits = 0;
    rep[len] = '\0';
    if (len < p || memcmp(rep, head, p) != 0) return -1;
    for (; p < len && rep[p] >= '0' && rep[p] <= '9'; p++, digits++) code = code * 10 + (rep[p] - '0');
    if (digits < 1 || digits > 3 || code > 255) return -1;
    if (len - p < sizeof mid - 1 || memcmp(rep + p, mid, sizeof mid - 1) != 0) return -1;
    p += sizeof mid - 1;
    size_t n = 0;
    for (; p + 1 < len && rep[p] != '"'; p += 2) {
        int hi = unhex(rep[p]), lo = unhex(rep[p + 1]);
        if (hi < 0 || lo < 0) return -1;
        rep[n++] = (char)(hi << 4 | lo);  /* n <= p/2: never ahead of what is still to read */
    }
    if (len - p != sizeof tail - 1 || memcmp(rep + p, tail, sizeof tail - 1) != 0) return -1;
    *out_len = n;
    return code;
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (command == NULL || strcmp(command, "VERSION") == 0) fallback();  /* answered without a daemon */
    read_stdin();
    if (!in_complete) fallback();
    build_request();
    ssize_t len = ask();
    if (len < 0) fallback();
    size_t out_len;
    int code = parse_reply((size_t)len, &out_len);
    if (code < 0) fallback();
    if (write_all(1, rep, out_len) < 0) return 1;
    return code;
}
