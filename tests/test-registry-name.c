/* SPDX-License-Identifier: MIT */
/* registry/: model names, the short-name catalogue, the config file and manifest parsing. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "registry.h"

static void assert_name(const char *s, const RegistryConfig *c, const char *host, const char *ns,
                        const char *model, const char *tag) {
        RegistryName n;
        QdError e = {};

        assert_int_equal(registry_name_parse(s, c, &n, &e), 0);
        assert_string_equal(n.host, host);
        assert_string_equal(n.namespace, ns);
        assert_string_equal(n.model, model);
        assert_string_equal(n.tag, tag);
}

static void test_defaults(void **state) {
        assert_name("llama2", NULL, "registry.ollama.ai", "library", "llama2", "latest");
        assert_name("llama2:7b", NULL, "registry.ollama.ai", "library", "llama2", "7b");
        assert_name("jmorgan/foo", NULL, "registry.ollama.ai", "jmorgan", "foo", "latest");
        assert_name("127.0.0.1:5000/me/tiny:v1.0", NULL, "127.0.0.1:5000", "me", "tiny", "v1.0");
        assert_name("hf.co/Org/Model-GGUF:Q4_K_M", NULL, "hf.co", "Org", "Model-GGUF", "Q4_K_M");
        assert_name("a:_x", NULL, "registry.ollama.ai", "library", "a", "_x");

        RegistryConfig c;
        registry_config_init(&c);
        c.default_host = strdup("localhost:5000");
        c.default_namespace = strdup("team");
        assert_name("m", &c, "localhost:5000", "team", "m", "latest");
        registry_config_done(&c);
}

static void test_bad_names(void **state) {
        static const char *const bad[] = {
                "",
                "..",
                ".hidden",
                "-dash",
                "a/../b",
                "../../etc/passwd",
                "a/b/c/d",
                "m:",
                "m:.x",
                "m:-x",
                "m:a/b",
                "m::x",
                "host:99999/ns/m",
                "host:0/ns/m",
                "host:/ns/m",
                "ho_st/ns/m",
                "-host/ns/m",
                "a..b/ns/m",
                "ns//m",
                "/m",
                "m/",
                "m@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "white space",
                "tab\tname",
                "caf\xc3\xa9",
                "x\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                RegistryName n;
                QdError e = {};
                int r = registry_name_parse(bad[i], NULL, &n, &e);
                if (r != -EINVAL)
                        fail_msg("'%s' was accepted", bad[i]);
                assert_int_equal(e.code, EINVAL);
                assert_true(strlen(e.msg) > 10);
        }

        /* Length limits, one over each. */
        char model[REGISTRY_COMPONENT_MAX + 2], tag[REGISTRY_TAG_MAX + 10];
        memset(model, 'm', sizeof(model) - 1);
        model[sizeof(model) - 1] = 0;
        RegistryName n;
        assert_int_equal(registry_name_parse(model, NULL, &n, NULL), -EINVAL);
        model[sizeof(model) - 2] = 0;
        assert_int_equal(registry_name_parse(model, NULL, &n, NULL), 0);
        snprintf(tag, sizeof(tag), "m:");
        memset(tag + 2, 't', REGISTRY_TAG_MAX + 1);
        tag[REGISTRY_TAG_MAX + 3] = 0;
        assert_int_equal(registry_name_parse(tag, NULL, &n, NULL), -EINVAL);
        tag[REGISTRY_TAG_MAX + 2] = 0;
        assert_int_equal(registry_name_parse(tag, NULL, &n, NULL), 0);
        assert_int_equal(registry_name_parse(NULL, NULL, &n, NULL), -EINVAL);
}

static void test_format(void **state) {
        RegistryName n;
        char *s = NULL;

        assert_int_equal(registry_name_parse("llama2:7b", NULL, &n, NULL), 0);
        assert_int_equal(registry_name_format(&n, &s), 0);
        assert_string_equal(s, "registry.ollama.ai/library/llama2:7b");
        free(s);
        assert_int_equal(registry_name_format_short(&n, NULL, &s), 0);
        assert_string_equal(s, "llama2:7b");
        free(s);
        assert_int_equal(registry_name_parse("me/x", NULL, &n, NULL), 0);
        assert_int_equal(registry_name_format_short(&n, NULL, &s), 0);
        assert_string_equal(s, "me/x:latest");
        free(s);
        assert_int_equal(registry_name_parse("h:1/me/x", NULL, &n, NULL), 0);
        assert_int_equal(registry_name_format_short(&n, NULL, &s), 0);
        assert_string_equal(s, "h:1/me/x:latest");
        free(s);
}

static char *write_tmp(const char *text) {
        char *path = strdup("/tmp/test-registry-conf-XXXXXX");
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
        close(fd);
        return path;
}

static void test_config(void **state) {
        RegistryConfig c;
        QdError e = {};
        char *p = write_tmp("# quantd.conf\n"
                            "[Daemon]\nWhatever=1\n"
                            "[Registry]\n"
                            "DefaultHost = localhost:5000\n"
                            "Insecure=localhost:5000\nInsecure=127.0.0.1:5001\n"
                            "ParallelParts=8\nLoopbackParallelParts=2\nPartSize=16M\nMaxBandwidth=10M\n"
                            "StallTimeout=5s\n"
                            "Retries=3\nBackoff=100ms\nPushChunkSize=1M\nPruneGrace=2h\nImportMaxBytes=1G\n"
                            "CAFile=/etc/ssl/x.pem\n"
                            "[Credentials]\nlocalhost:5000=alice:se:cret\n"
                            "[Models]\nllama-2-7b=library/llama2:7b\ntiny=me/tiny:v1\n");

        registry_config_init(&c);
        assert_int_equal(registry_config_load(&c, p, &e), 0);
        assert_string_equal(c.default_host, "localhost:5000");
        assert_string_equal(c.insecure_hosts[0], "localhost:5000");
        assert_string_equal(c.insecure_hosts[1], "127.0.0.1:5001");
        assert_null(c.insecure_hosts[2]);
        assert_int_equal(c.parallel_parts, 8);
        assert_int_equal(c.loopback_parallel_parts, 2);
        assert_true(c.part_size == 16ULL << 20);
        assert_true(c.max_bandwidth == 10ULL << 20);
        assert_int_equal(c.stall_timeout_s, 5);
        assert_int_equal(c.max_retries, 3);
        assert_int_equal(c.backoff_ms, 100);
        assert_true(c.push_chunk_size == 1ULL << 20);
        assert_true(c.prune_grace_s == 7200);
        assert_true(c.import_max_bytes == 1ULL << 30);
        assert_string_equal(c.ca_file, "/etc/ssl/x.pem");
        assert_int_equal(c.n_credentials, 1);
        assert_string_equal(c.credentials[0].username, "alice");
        assert_string_equal(c.credentials[0].password, "se:cret");

        /* Short names map through the catalogue, onto the configured default host. */
        RegistryName n;
        assert_int_equal(registry_name_resolve("llama-2-7b", &c, &n, &e), 0);
        assert_string_equal(n.host, "localhost:5000");
        assert_string_equal(n.namespace, "library");
        assert_string_equal(n.model, "llama2");
        assert_string_equal(n.tag, "7b");
        assert_int_equal(registry_name_resolve("tiny", &c, &n, &e), 0);
        assert_string_equal(n.namespace, "me");
        assert_string_equal(n.tag, "v1");
        /* Other names default to <registry>/library/<name>:latest. */
        assert_int_equal(registry_name_resolve("other", &c, &n, &e), 0);
        assert_string_equal(n.host, "localhost:5000");
        assert_string_equal(n.namespace, "library");
        assert_string_equal(n.tag, "latest");
        registry_config_done(&c);
        unlink(p);
        free(p);
}

static void test_config_parallel_parts(void **state) {
        static const struct {
                const char *host;
                unsigned parts;
        } cases[] = {
                {"localhost", 1},
                {"localhost:5000", 1},
                {"127.0.0.1:5000", 1},
                {"127.1.2.3", 1},
                {"[::1]:5000", 1},
                {"registry.ollama.ai", 4},
                {"10.0.0.1:5000", 4},
                {"128.0.0.1", 4},
                {"localhost.example.com", 4},
                {"127.0.0.1.example", 4},
                {"[::2]:5000", 4},
                {"[", 4},
                {":5000", 4},
        };
        RegistryConfig c;

        registry_config_init(&c);
        /* The defaults: one connection over loopback, four over the network. */
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                unsigned got = registry_config_parallel_parts(&c, cases[i].host);
                if (got != cases[i].parts)
                        fail_msg("%s: %u parts, expected %u", cases[i].host, got, cases[i].parts);
        }
        c.parallel_parts = 7;
        c.loopback_parallel_parts = 3;
        assert_int_equal(registry_config_parallel_parts(&c, "127.0.0.1:1"), 3);
        assert_int_equal(registry_config_parallel_parts(&c, "example.com"), 7);
        registry_config_done(&c);
}

static void test_config_errors(void **state) {
        static const char *const bad[] = {
                "[Registry]\nNoSuchKey=1\n",
                "[Registry]\nParallelParts=0\n",
                "[Registry]\nParallelParts=many\n",
                "[Registry]\nLoopbackParallelParts=0\n",
                "[Registry]\nLoopbackParallelParts=65\n",
                "[Registry]\nPartSize=12Q\n",
                "[Registry]\nPartSize=100\n",
                "[Registry]\nStallTimeout=0\n",
                "[Registry]\nBackoff=-1s\n",
                "[Registry]\nDefaultHost=bad_host\n",
                "[Registry]\nDefaultNamespace=../x\n",
                "[Credentials]\nhost=nopassword\n",
                "[Models]\nx=../../etc\n",
                "Key=outside\n",
                "[Registry\n",
                "[Registry]\njunk\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                RegistryConfig c;
                QdError e = {};
                char *p = write_tmp(bad[i]);
                registry_config_init(&c);
                if (registry_config_load(&c, p, &e) != -EINVAL)
                        fail_msg("config %zu was accepted: %s", i, bad[i]);
                assert_non_null(strstr(e.msg, ":"));
                registry_config_done(&c);
                unlink(p);
                free(p);
        }
        RegistryConfig c;
        QdError e = {};
        registry_config_init(&c);
        assert_int_equal(registry_config_load(&c, "/nonexistent/quantd.conf", &e), -ENOENT);
        registry_config_done(&c);
}

#define D1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define D2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"

static void test_manifest(void **state) {
        const char *ok = "{\"schemaVersion\":2,\"mediaType\":\"" REGISTRY_MEDIA_DOCKER_MANIFEST "\","
                         "\"config\":{\"mediaType\":\"" REGISTRY_MEDIA_DOCKER_CONFIG "\",\"digest\":\"" D1
                         "\",\"size\":10},"
                         "\"layers\":[{\"mediaType\":\"" REGISTRY_MEDIA_MODEL "\",\"digest\":\"" D2
                         "\",\"size\":1000,\"annotations\":{}}]}";
        RegistryManifest *m = NULL;
        QdError e = {};
        char *s = NULL;

        assert_int_equal(registry_manifest_parse(ok, strlen(ok), &m, &e), 0);
        assert_string_equal(m->media_type, REGISTRY_MEDIA_DOCKER_MANIFEST);
        assert_int_equal(m->n_layers, 1);
        assert_true(m->layers[0].size == 1000);
        assert_true(registry_manifest_total_size(m) == 1010);
        assert_non_null(registry_manifest_find_layer(m, REGISTRY_MEDIA_MODEL));
        assert_null(registry_manifest_find_layer(m, REGISTRY_MEDIA_TEMPLATE));
        /* Formatting and parsing again gives the same manifest. */
        assert_int_equal(registry_manifest_format(m, &s), 0);
        registry_manifest_free(m);
        assert_int_equal(registry_manifest_parse(s, strlen(s), &m, &e), 0);
        assert_string_equal(m->layers[0].digest, D2);
        registry_manifest_free(m);
        free(s);

        /* OCI without mediaType is accepted. */
        const char *oci = "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" D1
                          "\",\"size\":0},\"layers\":[]}";
        assert_int_equal(registry_manifest_parse(oci, strlen(oci), &m, &e), 0);
        assert_string_equal(m->media_type, REGISTRY_MEDIA_OCI_MANIFEST);
        registry_manifest_free(m);
}

static void test_manifest_errors(void **state) {
        static const char *const bad[] = {
                "",
                "not json",
                "[]",
                "{\"schemaVersion\":2} trailing",
                "{\"schemaVersion\":1,\"config\":{},\"layers\":[]}",
                "{\"schemaVersion\":\"2\"}",
                "{\"schemaVersion\":2,\"mediaType\":\"application/"
                "vnd.docker.distribution.manifest.list.v2+json\"}",
                "{\"schemaVersion\":2,\"mediaType\":5}",
                "{\"schemaVersion\":2,\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":[],\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"digest\":\"" D1 "\",\"size\":1},\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"sha256:12\",\"size\":1},"
                "\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"sha256:"
                "../../../../../../../../../../../../../../../../../../../../../etc/pwd\",\"size\":1},"
                "\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"sha256:"
                "AAAA111111111111111111111111111111111111111111111111111111111111\",\"size\":1},\"layers\":["
                "]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"md5:" D1 "\",\"size\":1},"
                "\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" D1 "\",\"size\":-1},"
                "\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" D1 "\",\"size\":1.5},"
                "\"layers\":[]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" D1 "\",\"size\":1},"
                "\"layers\":{}}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" D1 "\",\"size\":1},"
                "\"layers\":[7]}",
                "{\"schemaVersion\":2,\"config\":{\"mediaType\":\"x\",\"digest\":\"" D1 "\",\"size\":1},"
                "\"layers\":[{\"mediaType\":\"x\",\"digest\":\"" D2 "\",\"size\":9223372036854775807}]}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                RegistryManifest *m = NULL;
                QdError e = {};
                if (registry_manifest_parse(bad[i], strlen(bad[i]), &m, &e) != -EBADMSG)
                        fail_msg("manifest %zu was accepted: %s", i, bad[i]);
                assert_null(m);
                assert_int_equal(e.code, EBADMSG);
        }
        /* Over the size limit. */
        size_t big = REGISTRY_MANIFEST_MAX + 1;
        char *p = malloc(big);
        memset(p, ' ', big);
        RegistryManifest *m = NULL;
        assert_int_equal(registry_manifest_parse(p, big, &m, NULL), -EMSGSIZE);
        free(p);

        assert_true(registry_digest_is_valid(D1));
        assert_false(registry_digest_is_valid(NULL));
        assert_false(registry_digest_is_valid("sha256:"));
        assert_false(registry_digest_is_valid(D1 "1"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_bad_names),
                cmocka_unit_test(test_format),
                cmocka_unit_test(test_config),
                cmocka_unit_test(test_config_parallel_parts),
                cmocka_unit_test(test_config_errors),
                cmocka_unit_test(test_manifest),
                cmocka_unit_test(test_manifest_errors),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
