/* SPDX-License-Identifier: MIT */
/*
 * HTTP for the registry client (libcurl): one session per pull or push with its base URL, repository and
 * credentials; single requests with authentication, retries and cancellation; the settings every easy handle
 * shares (TLS, protocols, stall detection).
 *
 * DESIGN
 * - Authentication follows the registry's challenge: a 401 with "WWW-Authenticate: Bearer realm=…,
 *   service=…, scope=…" makes us fetch a token from the realm (with the configured basic credentials when
 *   there are some) and retry; "Basic" makes us send the configured credentials. A 401 after new
 *   credentials renews them again up to MAX_REAUTH times in all (short-lived tokens shared by parallel
 *   downloads can be spent by the others before our retry), then it is final (-EACCES); a token endpoint
 *   that refuses the credentials is final at once.
 * - Network errors, stalls (no byte for stall_timeout_s), 429 and 5xx are retried max_retries times with
 *   exponential backoff (backoff_ms doubled, at most 30 s); other statuses are final.
 * - Plain http is used only for hosts listed in insecure_hosts; https peers are always verified (ca_file or
 *   the system's store) and redirects may not leave https.
 * - Cancellation is polled by curl's progress callback and between retries.
 */

#include <curl/curl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <time.h>

#include "config.h"
#include "registry-http.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init_once(void) {
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static const RegistryCredential *find_credential(const RegistryConfig *c, const char *host) {
        for (size_t i = 0; i < c->n_credentials; i++)
                if (streq(c->credentials[i].host, host))
                        return &c->credentials[i];
        return NULL;
}

bool http_host_is_insecure(const RegistryConfig *c, const char *host) {
        for (char **i = c->insecure_hosts; i && *i; i++)
                if (streq(*i, host))
                        return true;
        return false;
}

int http_new(Http **ret, RegistryStore *s, const RegistryName *name, bool push, const atomic_bool *cancel,
             QdError *e) {
        _cleanup_(http_freep) Http *h = calloc(1, sizeof(Http));

        pthread_once(&curl_once, curl_init_once);
        if (curl_init_result != CURLE_OK)
                return qd_error_set(e, EIO, "Failed to initialise libcurl.");
        if (!h)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        h->config = registry_store_config(s);
        h->name = *name;
        h->cancel = cancel;
        h->insecure = http_host_is_insecure(h->config, name->host);
        h->base = strdup_printf("%s://%s", h->insecure ? "http" : "https", name->host);
        h->repo = strdup_printf("%s/%s", name->namespace, name->model);
        h->scope = strdup_printf("repository:%s/%s:%s", name->namespace, name->model,
                                 push ? "pull,push" : "pull");
        if (!h->base || !h->repo || !h->scope)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        h->credential = find_credential(h->config, name->host);
        *ret = TAKE_PTR(h);
        return 0;
}

Http *http_free(Http *h) {
        if (!h)
                return NULL;
        free(h->base);
        free(h->repo);
        free(h->scope);
        free(h->auth_header);
        free(h);
        return NULL;
}

void http_response_done(HttpResponse *r) {
        buf_free(&r->body);
        free(r->location);
        free(r->www_authenticate);
        free(r->content_type);
        free(r->docker_digest);
        *r = (HttpResponse){};
}

static int progress_cb(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
        Http *h = userdata;
        return cancelled(h->cancel) ? 1 : 0;
}

int http_setup_easy(Http *h, CURL *c) {
        const RegistryConfig *cfg = h->config;

        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, h->insecure ? "http,https" : "https");
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, h->insecure ? "http,https" : "https");
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        if (cfg->ca_file)
                curl_easy_setopt(c, CURLOPT_CAINFO, cfg->ca_file);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)cfg->stall_timeout_s);
        /* Stall detection: fewer than 1 byte per second for stall_timeout_s ends the transfer. */
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)cfg->stall_timeout_s);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "quantd/" PACKAGE_VERSION);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, progress_cb);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, h);
        return 0;
}

struct curl_slist *http_auth_headers(Http *h, struct curl_slist *l) {
        if (h->auth_header) {
                struct curl_slist *n = curl_slist_append(l, h->auth_header);
                if (!n) {
                        curl_slist_free_all(l);
                        return NULL;
                }
                return n;
        }
        return l;
}

char *http_url(Http *h, const char *fmt, ...) {
        _cleanup_free_ char *tail = NULL;
        va_list ap;

        va_start(ap, fmt);
        int r = vasprintf(&tail, fmt, ap);
        va_end(ap);
        if (r < 0)
                return NULL;
        return strdup_printf("%s/v2/%s%s", h->base, h->repo, tail);
}

int http_backoff(Http *h, unsigned attempt) {
        uint64_t ms = h->config->backoff_ms;

        for (unsigned i = 1; i < attempt && ms < 30000; i++)
                ms *= 2;
        ms = MIN(ms, (uint64_t)30000);
        uint64_t until = now_ns() + ms * 1000000ULL;
        while (now_ns() < until) {
                if (cancelled(h->cancel))
                        return -ECANCELED;
                struct timespec ts = {0, 20 * 1000000L};
                nanosleep(&ts, NULL);
        }
        return 0;
}

/* ---- WWW-Authenticate ---- */

/* Parses `Scheme key="value", key=value` into the scheme and the three parameters we use. */
int http_parse_challenge(const char *s, HttpChallenge *ret) {
        HttpChallenge c = {};
        const char *p = s;

        while (*p == ' ')
                p++;
        size_t n = strcspn(p, " ");
        if (n == 0 || n >= sizeof(c.scheme))
                return -EBADMSG;
        memcpy(c.scheme, p, n);
        p += n;
        while (*p) {
                while (*p == ' ' || *p == ',')
                        p++;
                if (!*p)
                        break;
                const char *eq = strchr(p, '=');
                if (!eq)
                        return -EBADMSG;
                size_t kn = (size_t)(eq - p);
                char value[1024];
                size_t vn = 0;
                const char *v = eq + 1;
                if (*v == '"') {
                        v++;
                        while (*v && *v != '"') {
                                if (*v == '\\' && v[1])
                                        v++;
                                if (vn + 1 >= sizeof(value))
                                        return -EMSGSIZE;
                                value[vn++] = *v++;
                        }
                        if (*v != '"')
                                return -EBADMSG;
                        v++;
                } else
                        while (*v && *v != ',' && *v != ' ') {
                                if (vn + 1 >= sizeof(value))
                                        return -EMSGSIZE;
                                value[vn++] = *v++;
                        }
                value[vn] = 0;
                char *dst = NULL;
                if (kn == 5 && strncasecmp(p, "realm", 5) == 0)
                        dst = c.realm;
                else if (kn == 7 && strncasecmp(p, "service", 7) == 0)
                        dst = c.service;
                else if (kn == 5 && strncasecmp(p, "scope", 5) == 0)
                        dst = c.scope;
                if (dst)
                        snprintf(dst, sizeof(c.realm), "%s", value);
                p = v;
        }
        *ret = c;
        return 0;
}

static size_t body_cb(char *p, size_t size, size_t n, void *userdata) {
        HttpResponse *r = userdata;
        size_t len = size * n;

        if (r->body.len + len > r->max_body) {
                r->too_large = true;
                return 0;
        }
        return buf_append(&r->body, p, len) < 0 ? 0 : len;
}

static char *header_value(const char *p, size_t len, const char *name) {
        size_t nl = strlen(name);

        if (len <= nl + 1 || strncasecmp(p, name, nl) != 0 || p[nl] != ':')
                return NULL;
        p += nl + 1;
        len -= nl + 1;
        while (len > 0 && (*p == ' ' || *p == '\t')) {
                p++;
                len--;
        }
        while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n' || p[len - 1] == ' '))
                len--;
        return strndup(p, len);
}

static size_t header_cb(char *p, size_t size, size_t n, void *userdata) {
        HttpResponse *r = userdata;
        size_t len = size * n;
        char *v;

        /* A new status line (after a redirect or a 100): forget the previous response's headers. */
        if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
                free(r->location);
                free(r->www_authenticate);
                free(r->content_type);
                free(r->docker_digest);
                r->location = r->www_authenticate = r->content_type = r->docker_digest = NULL;
                return len;
        }
        char **slots[] = {&r->location, &r->www_authenticate, &r->content_type, &r->docker_digest};
        const char *names[] = {"Location", "WWW-Authenticate", "Content-Type", "Docker-Content-Digest"};
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if ((v = header_value(p, len, names[i]))) {
                        free(*slots[i]);
                        *slots[i] = v;
                }
        return len;
}

typedef struct UploadSource {
        const HttpBody *body;
        uint64_t pos;
        Http *h;
} UploadSource;

static size_t read_cb(char *p, size_t size, size_t n, void *userdata) {
        UploadSource *u = userdata;
        const HttpBody *b = u->body;
        size_t want = MIN(size * n, (size_t)(b->size - u->pos));

        if (want == 0)
                return 0;
        if (b->fd >= 0) {
                ssize_t k = pread(b->fd, p, want, (off_t)(b->offset + u->pos));
                if (k <= 0)
                        return CURL_READFUNC_ABORT;
                want = (size_t)k;
        } else
                memcpy(p, (const uint8_t *)b->data + u->pos, want);
        u->pos += want;
        /* Blob bodies come from files; the count is of blob bytes, as for downloads. */
        if (b->fd >= 0)
                u->h->bytes_uploaded += want;
        return want;
}

static int seek_cb(void *userdata, curl_off_t offset, int origin) {
        UploadSource *u = userdata;

        if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > u->body->size)
                return CURL_SEEKFUNC_FAIL;
        if (u->body->fd >= 0)
                u->h->bytes_uploaded -= MIN(u->h->bytes_uploaded, u->pos - MIN(u->pos, (uint64_t)offset));
        u->pos = (uint64_t)offset;
        return CURL_SEEKFUNC_OK;
}

static int perform_once(Http *h, const char *method, const char *url, const char *const *headers,
                        const HttpBody *body, bool with_auth, HttpResponse *resp, CURLcode *ret_code,
                        char errbuf[CURL_ERROR_SIZE]) {
        CURL *c = curl_easy_init();
        struct curl_slist *hl = NULL;
        UploadSource up = {.body = body, .h = h};

        if (!c)
                return -ENOMEM;
        http_setup_easy(h, c);
        for (const char *const *i = headers; i && *i; i++)
                hl = curl_slist_append(hl, *i);
        if (with_auth)
                hl = http_auth_headers(h, hl);
        /* Uploads: no "Expect: 100-continue" round trip. */
        hl = curl_slist_append(hl, "Expect:");
        if (!hl) {
                curl_easy_cleanup(c);
                return -ENOMEM;
        }
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, body_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, resp);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
        if (streq(method, "HEAD"))
                curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        else if (streq(method, "GET"))
                curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
        else {
                curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
                curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
                curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)(body ? body->size : 0));
                static const HttpBody empty = {.fd = -1};
                if (!body)
                        up.body = &empty;
                curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
                curl_easy_setopt(c, CURLOPT_READDATA, &up);
                curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, seek_cb);
                curl_easy_setopt(c, CURLOPT_SEEKDATA, &up);
                /* Redirected uploads would resend the body elsewhere; registries answer uploads directly. */
                curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
        }
        errbuf[0] = 0;
        *ret_code = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
        /* Upload locations may be relative; make them absolute against the effective URL. */
        if (resp->location && resp->location[0] == '/') {
                char *eff = NULL;
                curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff);
                const char *hoststart = eff ? strstr(eff, "://") : NULL;
                const char *pathstart = hoststart ? strchr(hoststart + 3, '/') : NULL;
                if (pathstart) {
                        char *abs = strdup_printf("%.*s%s", (int)(pathstart - eff), eff, resp->location);
                        if (abs) {
                                free(resp->location);
                                resp->location = abs;
                        }
                }
        }
        curl_slist_free_all(hl);
        curl_easy_cleanup(c);
        return 0;
}

/* Fetches a token from the challenge's realm. */
static int fetch_token(Http *h, const HttpChallenge *ch, QdError *e) {
        _cleanup_free_ char *url = NULL;
        HttpResponse resp = {.max_body = 1U << 20};
        char errbuf[CURL_ERROR_SIZE];
        CURLcode code = CURLE_OK;
        int r;

        CURL *c = curl_easy_init();
        if (!c)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        char *s1 = curl_easy_escape(c, ch->service, 0);
        char *s2 = curl_easy_escape(c, ch->scope[0] ? ch->scope : h->scope, 0);
        curl_easy_cleanup(c);
        if (!s1 || !s2) {
                curl_free(s1);
                curl_free(s2);
                return qd_error_set(e, ENOMEM, "Out of memory.");
        }
        url = strdup_printf("%s%sservice=%s&scope=%s", ch->realm, strchr(ch->realm, '?') ? "&" : "?", s1,
                            s2);
        curl_free(s1);
        curl_free(s2);
        if (!url)
                return qd_error_set(e, ENOMEM, "Out of memory.");
        if (!startswith(ch->realm, "https://") && !(h->insecure && startswith(ch->realm, "http://")))
                return qd_error_set(e, EACCES, "Registry %s asks for a token from '%s', which is not https.",
                                    h->name.host, ch->realm);

        _cleanup_free_ char *basic = NULL;
        const char *hdrs[2] = {};
        if (h->credential) {
                _cleanup_free_ char *pair =
                        strdup_printf("%s:%s", h->credential->username, h->credential->password);
                if (!pair)
                        return qd_error_set(e, ENOMEM, "Out of memory.");
                basic = http_basic_header(pair);
                if (!basic)
                        return qd_error_set(e, ENOMEM, "Out of memory.");
                hdrs[0] = basic;
        }
        for (unsigned attempt = 0;; attempt++) {
                http_response_done(&resp);
                resp.max_body = 1U << 20;
                r = perform_once(h, "GET", url, hdrs, NULL, false, &resp, &code, errbuf);
                if (r < 0)
                        return qd_error_set(e, r, "Out of memory.");
                if (code == CURLE_ABORTED_BY_CALLBACK)
                        return qd_error_set(e, ECANCELED, "Cancelled.");
                bool transient = code != CURLE_OK || resp.status == 429 || resp.status >= 500;
                if (!transient || attempt >= h->config->max_retries)
                        break;
                h->retries++;
                r = http_backoff(h, attempt + 1);
                if (r < 0) {
                        http_response_done(&resp);
                        return qd_error_set(e, r, "Cancelled.");
                }
        }
        if (code != CURLE_OK) {
                http_response_done(&resp);
                return qd_error_set(e, EHOSTUNREACH, "Failed to reach the token service '%s': %s.",
                                    ch->realm, errbuf[0] ? errbuf : curl_easy_strerror(code));
        }
        if (resp.status == 401 || resp.status == 403) {
                http_response_done(&resp);
                return qd_error_set(e, EACCES,
                                    "Registry %s refused the %s: check [Credentials] in the config.",
                                    h->name.host, h->credential ? "credentials" : "anonymous token request");
        }
        if (resp.status != 200) {
                http_response_done(&resp);
                return qd_error_set(e, EPROTO, "The token service '%s' answered HTTP %ld.", ch->realm,
                                    resp.status);
        }
        json_object *root = json_tokener_parse(resp.body.data ? (const char *)resp.body.data : "");
        json_object *tok = NULL;
        http_response_done(&resp);
        if (!root ||
            !(json_object_object_get_ex(root, "token", &tok) ||
              json_object_object_get_ex(root, "access_token", &tok)) ||
            !json_object_is_type(tok, json_type_string) || json_object_get_string_len(tok) == 0) {
                json_object_put(root);
                return qd_error_set(e, EPROTO, "The token service '%s' sent no token.", ch->realm);
        }
        free(h->auth_header);
        h->auth_header = strdup_printf("Authorization: Bearer %s", json_object_get_string(tok));
        json_object_put(root);
        return h->auth_header ? 0 : qd_error_set(e, ENOMEM, "Out of memory.");
}

char *http_basic_header(const char *pair) {
        size_t n = strlen(pair);
        size_t enc = 4 * ((n + 2) / 3);
        _cleanup_free_ unsigned char *b64 = malloc(enc + 1);

        if (!b64)
                return NULL;
        EVP_EncodeBlock(b64, (const unsigned char *)pair, (int)n);
        return strdup_printf("Authorization: Basic %s", b64);
}

int http_authenticate(Http *h, const char *www_authenticate, QdError *e) {
        HttpChallenge ch;

        if (!www_authenticate || http_parse_challenge(www_authenticate, &ch) < 0)
                return qd_error_set(e, EACCES,
                                    "Registry %s requires authentication but sent no usable challenge.",
                                    h->name.host);
        if (strcasecmp(ch.scheme, "Bearer") == 0) {
                if (!ch.realm[0])
                        return qd_error_set(e, EACCES,
                                            "Registry %s sent a bearer challenge without a realm.",
                                            h->name.host);
                return fetch_token(h, &ch, e);
        }
        if (strcasecmp(ch.scheme, "Basic") == 0) {
                if (!h->credential)
                        return qd_error_set(e, EACCES,
                                            "Registry %s requires a user name and password; add them under "
                                            "[Credentials] in the config.",
                                            h->name.host);
                _cleanup_free_ char *pair =
                        strdup_printf("%s:%s", h->credential->username, h->credential->password);
                if (!pair)
                        return qd_error_set(e, ENOMEM, "Out of memory.");
                free(h->auth_header);
                h->auth_header = http_basic_header(pair);
                return h->auth_header ? 0 : qd_error_set(e, ENOMEM, "Out of memory.");
        }
        return qd_error_set(e, EACCES, "Registry %s asks for unsupported authentication '%s'.", h->name.host,
                            ch.scheme);
}

/* Renewals of credentials one request may make before a 401 is final. */
#define MAX_REAUTH 3

int http_request(Http *h, const char *method, const char *url, const char *const *headers,
                 const HttpBody *body, size_t max_body, HttpResponse *ret, QdError *e) {
        char errbuf[CURL_ERROR_SIZE];
        unsigned attempt = 0, reauths = 0;
        int r;

        for (;;) {
                HttpResponse resp = {.max_body = max_body};
                CURLcode code;
                if (cancelled(h->cancel))
                        return qd_error_set(e, ECANCELED, "Cancelled.");
                r = perform_once(h, method, url, headers, body, true, &resp, &code, errbuf);
                if (r < 0)
                        return qd_error_set(e, r, "Out of memory.");
                if (code == CURLE_ABORTED_BY_CALLBACK) {
                        http_response_done(&resp);
                        return qd_error_set(e, ECANCELED, "Cancelled.");
                }
                if (code == CURLE_WRITE_ERROR && resp.too_large) {
                        http_response_done(&resp);
                        return qd_error_set(e, EMSGSIZE,
                                            "Registry %s sent a reply over %zu bytes for %s %s.",
                                            h->name.host, max_body, method, url);
                }
                if (code == CURLE_OK && resp.status == 401 && reauths < MAX_REAUTH) {
                        reauths++;
                        r = http_authenticate(h, resp.www_authenticate, e);
                        http_response_done(&resp);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (code == CURLE_OK && (resp.status == 401 || resp.status == 403)) {
                        http_response_done(&resp);
                        return qd_error_set(e, EACCES, "Registry %s denied access to %s.", h->name.host,
                                            h->repo);
                }
                bool transient = code != CURLE_OK || resp.status == 429 || resp.status >= 500;
                if (transient && attempt < h->config->max_retries &&
                    (!body || body->fd >= 0 || body->data)) {
                        attempt++;
                        h->retries++;
                        http_response_done(&resp);
                        r = http_backoff(h, attempt);
                        if (r < 0)
                                return qd_error_set(e, r, "Cancelled.");
                        continue;
                }
                if (code != CURLE_OK) {
                        http_response_done(&resp);
                        int err = code == CURLE_OPERATION_TIMEDOUT ? ETIMEDOUT
                                  : code == CURLE_PEER_FAILED_VERIFICATION ||
                                                  code == CURLE_SSL_CACERT_BADFILE ||
                                                  code == CURLE_SSL_CONNECT_ERROR
                                          ? EACCES
                                          : EHOSTUNREACH;
                        return qd_error_set(e, err, "Failed to reach registry %s: %s.", h->name.host,
                                            errbuf[0] ? errbuf : curl_easy_strerror(code));
                }
                *ret = resp;
                return 0;
        }
}
