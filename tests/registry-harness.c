/* SPDX-License-Identifier: MIT */
/* Registry servers, the fault proxy, certificates and large files for the registry suite and benchmark. */

#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include <json-c/json.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "registry-harness.h"

const char *harness_registry_dir(void) {
        const char *d = getenv("QUANTD_TEST_REGISTRY_DIR");
        if (!d)
                fail_msg("QUANTD_TEST_REGISTRY_DIR is not set");
        return d;
}

unsigned harness_free_port(void) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(a);

        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
        close(fd);
        return ntohs(a.sin_port);
}

static size_t collect_cb(char *p, size_t s, size_t n, void *u) {
        Buf *b = u;
        if (b)
                buf_append(b, p, s * n);
        return s * n;
}

long harness_http(const char *method, const char *url, Buf *body) {
        CURL *c = curl_easy_init();
        long status = 0;

        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect_cb);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
        /* Only for "is it up yet": the TLS registry's certificate is checked by the code under test. */
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
        if (streq(method, "POST"))
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        if (curl_easy_perform(c) == CURLE_OK)
                curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        return status;
}

static void wait_for_http(const char *url) {
        for (int i = 0; i < 200; i++) {
                if (harness_http("GET", url, NULL) != 0)
                        return;
                struct timespec ts = {0, 50 * 1000000L};
                nanosleep(&ts, NULL);
        }
        fail_msg("%s did not come up", url);
}

void harness_start_registry(RegistryServer *ret, const char *dir, const char *name,
                            const RegistryServerOptions *o) {
        RegistryServer s = {.port = harness_free_port()};
        char *root = strdup_printf("%s/%s", dir, name);
        char *config = strdup_printf("%s/config.yml", harness_registry_dir());
        char *htpasswd = strdup_printf("%s/htpasswd", harness_registry_dir());
        char *log = strdup_printf("%s/%s.log", dir, name);

        snprintf(s.host, sizeof(s.host), "127.0.0.1:%u", s.port);
        assert_int_equal(mkdir(root, 0755), 0);
        s.pid = fork();
        assert_true(s.pid >= 0);
        if (s.pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                dup2(fd, 1);
                dup2(fd, 2);
                setenv("REGISTRY_HTTP_ADDR", s.host, 1);
                setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", root, 1);
                setenv("REGISTRY_HTTP_SECRET", "quantd-test", 1);
                if (o && o->htpasswd) {
                        setenv("REGISTRY_AUTH_HTPASSWD_PATH", htpasswd, 1);
                        setenv("REGISTRY_AUTH_HTPASSWD_REALM", "quantd-test", 1);
                }
                if (o && o->tls_cert) {
                        setenv("REGISTRY_HTTP_TLS_CERTIFICATE", o->tls_cert, 1);
                        setenv("REGISTRY_HTTP_TLS_KEY", o->tls_key, 1);
                }
                execlp("docker-registry", "docker-registry", "serve", config, (char *)NULL);
                fprintf(stderr, "docker-registry: %m\n");
                _exit(127);
        }
        char *url = strdup_printf("%s://%s/v2/", o && o->tls_cert ? "https" : "http", s.host);
        wait_for_http(url);
        free(url);
        free(root);
        free(config);
        free(htpasswd);
        free(log);
        *ret = s;
}

void harness_start_proxy(RegistryServer *ret, unsigned upstream_port) {
        char *script = strdup_printf("%s/fault-proxy.py", harness_registry_dir());
        char *up = strdup_printf("127.0.0.1:%u", upstream_port);
        RegistryServer s = {};
        int pipefd[2];

        assert_int_equal(pipe(pipefd), 0);
        s.pid = fork();
        assert_true(s.pid >= 0);
        if (s.pid == 0) {
                dup2(pipefd[1], 1);
                close(pipefd[0]);
                execlp("python3", "python3", script, "--upstream", up, (char *)NULL);
                _exit(127);
        }
        close(pipefd[1]);
        char line[64] = {};
        size_t n = 0;
        while (n + 1 < sizeof(line)) {
                ssize_t k = read(pipefd[0], line + n, 1);
                if (k <= 0 || line[n] == '\n')
                        break;
                n++;
        }
        close(pipefd[0]);
        if (sscanf(line, "PORT %u", &s.port) != 1)
                fail_msg("fault-proxy.py did not start");
        snprintf(s.host, sizeof(s.host), "127.0.0.1:%u", s.port);
        free(script);
        free(up);
        *ret = s;
}

void harness_stop(RegistryServer *s) {
        if (s->pid > 0) {
                kill(s->pid, SIGTERM);
                waitpid(s->pid, NULL, 0);
        }
        s->pid = 0;
}

void harness_make_certificate(const char *cert_path, const char *key_path) {
        EVP_PKEY *key = EVP_EC_gen("P-256");
        X509 *x = X509_new();
        assert_non_null(key);
        assert_non_null(x);
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
        X509_gmtime_adj(X509_getm_notBefore(x), -3600);
        X509_gmtime_adj(X509_getm_notAfter(x), 86400);
        X509_set_pubkey(x, key);
        X509_NAME *name = X509_get_subject_name(x);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"quantd-test", -1, -1,
                                   0);
        X509_set_issuer_name(x, name);
        X509V3_CTX ctx;
        X509V3_set_ctx_nodb(&ctx);
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, "IP:127.0.0.1");
        assert_non_null(san);
        X509_add_ext(x, san, -1);
        X509_EXTENSION_free(san);
        assert_true(X509_sign(x, key, EVP_sha256()) > 0);
        FILE *f = fopen(cert_path, "we");
        assert_non_null(f);
        PEM_write_X509(f, x);
        fclose(f);
        f = fopen(key_path, "we");
        assert_non_null(f);
        PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
        fclose(f);
        X509_free(x);
        EVP_PKEY_free(key);
}

int harness_random_fd(uint64_t size, uint64_t seed) {
        int fd = memfd_create("random", MFD_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t)size), 0);
        uint64_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        assert_true(p != MAP_FAILED);
        uint64_t x = seed | 1;
        for (uint64_t i = 0; i < size / 8; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = x;
        }
        munmap(p, size);
        return fd;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
        return remove(p);
}

void harness_rm_rf(const char *path) {
        nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

uint64_t harness_proxy_stat(const RegistryServer *proxy, const char *key) {
        char *url = strdup_printf("http://%s/__stats", proxy->host);
        Buf b = {};
        json_object *o, *v;

        assert_int_equal(harness_http("GET", url, &b), 200);
        o = json_tokener_parse((const char *)b.data);
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, key, &v));
        uint64_t n = (uint64_t)json_object_get_int64(v);
        json_object_put(o);
        buf_free(&b);
        free(url);
        return n;
}
