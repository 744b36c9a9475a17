/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The registry client's HTTP session (http.c), shared by pull.c and push.c only. A session belongs to the
 * one worker thread that runs the pull or push.
 */

#include <curl/curl.h>

#include "registry-internal.h"

typedef struct Http {
        const RegistryConfig *config;
        RegistryName name;
        const atomic_bool *cancel;
        bool insecure;                        /* plain http allowed for this host */
        char *base;                           /* "https://host" */
        char *repo;                           /* "namespace/model" */
        char *scope;                          /* "repository:ns/model:pull[,push]" */
        char *auth_header;                    /* "Authorization: …" once we have credentials, else NULL */
        const RegistryCredential *credential; /* from the config, or NULL */
        unsigned retries;
        uint64_t bytes_uploaded;
} Http;

typedef struct HttpResponse {
        long status;
        Buf body; /* at most max_body bytes */
        size_t max_body;
        bool too_large;
        char *location;
        char *www_authenticate;
        char *content_type;
        char *docker_digest;
} HttpResponse;

/* A request body: data/size in memory, or size bytes of fd from offset (fd >= 0). */
typedef struct HttpBody {
        const void *data;
        int fd;
        uint64_t offset;
        uint64_t size;
} HttpBody;

typedef struct HttpChallenge {
        char scheme[32];
        char realm[1024];
        char service[1024];
        char scope[1024];
} HttpChallenge;

int http_new(Http **ret, RegistryStore *s, const RegistryName *name, bool push, const atomic_bool *cancel,
             QdError *e);
Http *http_free(Http *h);
DEFINE_TRIVIAL_CLEANUP_FUNC(Http *, http_free);

bool http_host_is_insecure(const RegistryConfig *c, const char *host);

/* base + "/v2/" + repo + the formatted tail ("/manifests/latest"). */
char *http_url(Http *h, const char *fmt, ...) _printf_(2, 3);

/* TLS, protocols, redirects, stall detection and cancellation for an easy handle of this session. */
int http_setup_easy(Http *h, CURL *c);

/* Appends the session's Authorization header, if any. Frees l and returns NULL when out of memory. */
struct curl_slist *http_auth_headers(Http *h, struct curl_slist *l);

/* Acts on a 401's WWW-Authenticate header: fetches a bearer token or arms basic credentials. */
int http_authenticate(Http *h, const char *www_authenticate, QdError *e);

/* Parses a WWW-Authenticate value. */
int http_parse_challenge(const char *s, HttpChallenge *ret);

/* "Authorization: Basic <base64(pair)>" */
char *http_basic_header(const char *pair);

/* Sleeps the backoff delay before retry number attempt (1, 2, …), watching cancel. */
int http_backoff(Http *h, unsigned attempt);

/*
 * One request with authentication and retries. On success (any HTTP status) ret holds the response; the
 * caller judges the status. Fails on network errors after the retries, on cancellation, on an over-long
 * body.
 */
int http_request(Http *h, const char *method, const char *url, const char *const *headers,
                 const HttpBody *body, size_t max_body, HttpResponse *ret, QdError *e);
void http_response_done(HttpResponse *r);
