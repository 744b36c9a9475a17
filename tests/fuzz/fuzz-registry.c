/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the registry's parsers of untrusted input. The first byte picks the parser: manifests
 * (parsed, formatted and parsed again to the same values), model names, or whole archives imported into a
 * scratch store (which must end up with the model or unchanged).
 */

#include <dirent.h>
#include <sys/mman.h>

#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static RegistryStore *scratch_store(void) {
        static RegistryStore *store;
        static char dir[64];

        if (!store) {
                snprintf(dir, sizeof(dir), "/tmp/fuzz-registry-XXXXXX");
                if (!mkdtemp(dir) || registry_store_open(&store, dir, NULL, NULL) < 0)
                        abort();
        }
        return store;
}

static void fuzz_manifest(const uint8_t *data, size_t size) {
        RegistryManifest *m = NULL, *again = NULL;
        char *text = NULL;

        if (registry_manifest_parse(data, size, &m, NULL) < 0)
                return;
        if (registry_manifest_format(m, &text) < 0 ||
            registry_manifest_parse(text, strlen(text), &again, NULL) < 0)
                abort();
        if (again->n_layers != m->n_layers || !streq(again->config.digest, m->config.digest) ||
            registry_manifest_total_size(again) != registry_manifest_total_size(m))
                abort();
        registry_manifest_free(again);
        registry_manifest_free(m);
        free(text);
}

static void fuzz_name(const uint8_t *data, size_t size) {
        char *s = strndup((const char *)data, size);
        RegistryName n;

        if (s && registry_name_parse(s, NULL, &n, NULL) >= 0) {
                /* What parses is safe as a path: no part is empty, "." or "..", none holds '/'. */
                const char *parts[] = {n.host, n.namespace, n.model, n.tag};
                for (size_t i = 0; i < 4; i++)
                        if (!parts[i][0] || strchr(parts[i], '/') || streq(parts[i], ".") ||
                            streq(parts[i], ".."))
                                abort();
        }
        free(s);
}

static void fuzz_archive(const uint8_t *data, size_t size) {
        RegistryStore *s = scratch_store();
        RegistryName n;
        int fd = memfd_create("archive", MFD_CLOEXEC);

        if (fd < 0 || write(fd, data, size) != (ssize_t)size || lseek(fd, 0, SEEK_SET) != 0)
                abort();
        if (registry_import(s, fd, NULL, NULL, NULL, NULL, &n, NULL) >= 0) {
                if (registry_store_verify(s, &n, NULL) < 0 || registry_store_delete(s, &n, NULL) < 0)
                        abort();
        }
        close(fd);
        /* Whatever happened, nothing may stay behind. */
        char *blobs = strdup_printf("%s/blobs", registry_store_root(s));
        DIR *d = opendir(blobs);
        struct dirent *de;
        while (d && (de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                        abort();
        if (d)
                closedir(d);
        free(blobs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size == 0)
                return 0;
        switch (data[0] % 3) {
        case 0:
                fuzz_manifest(data + 1, size - 1);
                break;
        case 1:
                fuzz_name(data + 1, size - 1);
                break;
        default:
                fuzz_archive(data + 1, size - 1);
                break;
        }
        return 0;
}
