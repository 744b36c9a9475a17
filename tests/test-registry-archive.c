/* SPDX-License-Identifier: MIT */
/* registry/: export to and import from tar archives, and the hostile archives import must refuse. */

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "registry.h"

typedef struct Fixture {
        char dir[64];
        RegistryConfig config;
        RegistryStore *src, *dst;
        char *dst_root;
        RegistryManifest *m; /* of "tiny" in src */
        char *raw;
} Fixture;

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f) {
        return remove(p);
}

static RegistryName name_of(const char *s) {
        RegistryName n;
        assert_int_equal(registry_name_parse(s, NULL, &n, NULL), 0);
        return n;
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        QdError e = {};

        snprintf(f->dir, sizeof(f->dir), "/tmp/test-registry-archive-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        registry_config_init(&f->config);
        char *a = strdup_printf("%s/a", f->dir);
        f->dst_root = strdup_printf("%s/b", f->dir);
        assert_int_equal(registry_store_open(&f->src, a, &f->config, &e), 0);
        assert_int_equal(registry_store_open(&f->dst, f->dst_root, &f->config, &e), 0);
        free(a);

        char *p = strdup_printf("%s/stories260K.gguf", getenv("QUANTD_TEST_MODELS"));
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                fail_msg("Test model %s is missing", p);
        free(p);
        RegistryCreateLayer layers[] = {
                {.media_type = REGISTRY_MEDIA_MODEL, .fd = fd},
                {.media_type = REGISTRY_MEDIA_SYSTEM, .fd = -1, .data = "Be brief.", .size = 9},
        };
        RegistryName n = name_of("tiny:1");
        assert_int_equal(registry_store_create(f->src, &n, layers, 2, NULL, NULL, NULL, NULL, &e), 0);
        close(fd);
        assert_int_equal(registry_store_show(f->src, &n, &f->m, &f->raw, &e), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;

        registry_manifest_free(f->m);
        free(f->raw);
        registry_store_free(f->src);
        registry_store_free(f->dst);
        registry_config_done(&f->config);
        nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(f->dst_root);
        free(f);
        return 0;
}

/* Every entry of the destination store's blobs/ and manifests/ trees, dot files included. */
static unsigned count_all(Fixture *f) {
        unsigned n = 0;
        const char *subs[] = {"blobs", "manifests"};
        for (size_t i = 0; i < 2; i++) {
                char *p = strdup_printf("%s/%s", f->dst_root, subs[i]);
                DIR *d = opendir(p);
                struct dirent *de;
                while ((de = readdir(d)))
                        if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                                n++;
                closedir(d);
                free(p);
        }
        return n;
}

static void test_format_from_filename(void **state) {
        assert_int_equal(registry_archive_format_from_filename("x.tar"), REGISTRY_ARCHIVE_TAR);
        assert_int_equal(registry_archive_format_from_filename("x.tar.gz"), REGISTRY_ARCHIVE_TAR_GZ);
        assert_int_equal(registry_archive_format_from_filename("x.tgz"), REGISTRY_ARCHIVE_TAR_GZ);
        assert_int_equal(registry_archive_format_from_filename("x.tar.zst"), REGISTRY_ARCHIVE_TAR_ZST);
        assert_int_equal(registry_archive_format_from_filename("x.zip"), -EINVAL);
        assert_int_equal(registry_archive_format_from_filename(NULL), -EINVAL);
}

static void count_events(const RegistryProgress *p, void *userdata) {
        (*(unsigned *)userdata)++;
}

static void roundtrip(Fixture *f, RegistryArchiveFormat fmt, const char *as) {
        QdError e = {};
        int fd = memfd_create("archive", MFD_CLOEXEC);
        RegistryName n = name_of("tiny:1"), got, target = name_of(as);

        unsigned events[2] = {};
        assert_int_equal(registry_export(f->src, &n, fd, fmt, count_events, &events[0], NULL, &e), 0);
        assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
        assert_int_equal(registry_import(f->dst, fd, &target, count_events, &events[1], NULL, &got, &e), 0);
        /* Two events per blob at least (start, end) and DONE, on both sides. */
        assert_true(events[0] >= 2 * (f->m->n_layers + 1) + 1);
        assert_true(events[1] >= 2 * (f->m->n_layers + 1) + 1);
        assert_string_equal(got.model, target.model);
        assert_int_equal(registry_store_verify(f->dst, &target, &e), 0);
        RegistryManifest *m = NULL;
        char *raw = NULL;
        assert_int_equal(registry_store_show(f->dst, &target, &m, &raw, &e), 0);
        assert_string_equal(raw, f->raw);
        registry_manifest_free(m);
        free(raw);
        close(fd);
}

static void test_roundtrip(void **state) {
        Fixture *f = *state;
        QdError e = {};

        roundtrip(f, REGISTRY_ARCHIVE_TAR, "plain");
        roundtrip(f, REGISTRY_ARCHIVE_TAR_GZ, "gz");
        roundtrip(f, REGISTRY_ARCHIVE_TAR_ZST, "zst");

        /* Without a new name the archive's own name is used; importing it twice is refused. */
        int fd = memfd_create("archive", MFD_CLOEXEC);
        RegistryName n = name_of("tiny:1"), got;
        assert_int_equal(registry_export(f->src, &n, fd, REGISTRY_ARCHIVE_TAR, NULL, NULL, NULL, &e), 0);
        assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
        assert_int_equal(registry_import(f->dst, fd, NULL, NULL, NULL, NULL, &got, &e), 0);
        assert_string_equal(got.model, "tiny");
        assert_string_equal(got.tag, "1");
        assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
        e = (QdError){};
        assert_int_equal(registry_import(f->dst, fd, NULL, NULL, NULL, NULL, NULL, &e), -EEXIST);
        assert_non_null(strstr(e.msg, "already exists"));
        close(fd);

        /* Export errors: missing model, bad format. */
        RegistryName missing = name_of("missing");
        fd = memfd_create("archive", MFD_CLOEXEC);
        assert_int_equal(registry_export(f->src, &missing, fd, REGISTRY_ARCHIVE_TAR, NULL, NULL, NULL, NULL),
                         -ENOENT);
        assert_int_equal(
                registry_export(f->src, &n, fd, _REGISTRY_ARCHIVE_FORMAT_INVALID, NULL, NULL, NULL, NULL),
                -EINVAL);
        atomic_bool cancel = true;
        assert_int_equal(registry_export(f->src, &n, fd, REGISTRY_ARCHIVE_TAR, NULL, NULL, &cancel, NULL),
                         -ECANCELED);
        close(fd);
}

/* ---- hostile archives, written entry by entry ---- */

typedef struct Entry {
        const char *path;
        unsigned type;    /* AE_IFREG unless set */
        const void *data; /* NULL: data of the blob named by digest */
        size_t size;
        const char *digest; /* blob whose bytes to write */
        const char *link;   /* symlink target or hardlink source */
        bool hardlink;
        int64_t declared; /* header size when not 0 */
} Entry;

static int build(Fixture *f, const Entry *entries, size_t n, bool gzip) {
        int fd = memfd_create("hostile", MFD_CLOEXEC);
        struct archive *a = archive_write_new();

        archive_write_set_format_pax_restricted(a);
        if (gzip)
                archive_write_add_filter_gzip(a);
        assert_int_equal(archive_write_open_fd(a, fd), ARCHIVE_OK);
        for (size_t i = 0; i < n; i++) {
                const Entry *en = &entries[i];
                struct archive_entry *ent = archive_entry_new();
                void *buf = NULL;
                size_t size = en->size;
                archive_entry_set_pathname(ent, en->path);
                archive_entry_set_filetype(ent, en->type ? en->type : AE_IFREG);
                archive_entry_set_perm(ent, 0644);
                if (en->link && en->hardlink)
                        archive_entry_set_hardlink(ent, en->link);
                else if (en->link)
                        archive_entry_set_symlink(ent, en->link);
                if (en->digest) {
                        int bfd;
                        assert_int_equal(registry_store_open_blob(f->src, en->digest, &bfd, NULL), 0);
                        struct stat st;
                        fstat(bfd, &st);
                        size = (size_t)st.st_size;
                        buf = malloc(size);
                        assert_int_equal(read(bfd, buf, size), (ssize_t)size);
                        close(bfd);
                } else if (en->data)
                        buf = memcpy(malloc(size + 1), en->data, size);
                if (en->type == AE_IFCHR)
                        archive_entry_set_rdev(ent, makedev(1, 3));
                bool has_data = (!en->type || en->type == AE_IFREG) && !en->link;
                archive_entry_set_size(ent, has_data ? (en->declared ? en->declared : (la_int64_t)size) : 0);
                assert_int_equal(archive_write_header(a, ent), ARCHIVE_OK);
                if (has_data && size > 0)
                        archive_write_data(a, buf, en->declared ? MIN(size, (size_t)en->declared) : size);
                archive_entry_free(ent);
                free(buf);
        }
        archive_write_close(a);
        archive_write_free(a);
        assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
        return fd;
}

static void expect_refused(Fixture *f, const Entry *entries, size_t n, int error, const char *words) {
        unsigned before = count_all(f);
        QdError e = {};
        int fd = build(f, entries, n, false);
        int r = registry_import(f->dst, fd, NULL, NULL, NULL, NULL, NULL, &e);
        close(fd);
        if (r != -error)
                fail_msg("import returned %d (%s), expected %d", r, e.msg, -error);
        if (words && !strstr(e.msg, words))
                fail_msg("message '%s' lacks '%s'", e.msg, words);
        /* The store is unchanged: no manifest, no blob, no temporary file. */
        assert_int_equal(count_all(f), before);
}

static void test_hostile_archives(void **state) {
        Fixture *f = *state;
        const char *mp = "manifests/registry.ollama.ai/library/evil/latest";
        const char *d0 = f->m->layers[0].digest, *d1 = f->m->layers[1].digest, *dc = f->m->config.digest;
        char b0[96], b1[96], bc[96];
        snprintf(b0, sizeof(b0), "blobs/sha256-%s", d0 + 7);
        snprintf(b1, sizeof(b1), "blobs/sha256-%s", d1 + 7);
        snprintf(bc, sizeof(bc), "blobs/sha256-%s", dc + 7);
        Entry man = {.path = mp, .data = f->raw, .size = strlen(f->raw)};
        Entry blob0 = {.path = b0, .digest = d0}, blob1 = {.path = b1, .digest = d1},
              cfg = {.path = bc, .digest = dc};

        /* The good archive imports, so each refusal below is down to its one change. */
        {
                Entry ok[] = {man, blob0, blob1, cfg};
                int fd = build(f, ok, 4, true);
                RegistryName n = name_of("good");
                QdError e = {};
                assert_int_equal(registry_import(f->dst, fd, &n, NULL, NULL, NULL, NULL, &e), 0);
                close(fd);
                assert_int_equal(registry_store_delete(f->dst, &n, &e), 0);
                assert_int_equal(count_all(f), 0);
        }
        {
                Entry x[] = {{.path = "/etc/passwd", .data = "x", .size = 1}};
                expect_refused(f, x, 1, EBADMSG, "absolute");
        }
        {
                Entry x[] = {man, {.path = "blobs/../../../../tmp/x", .data = "x", .size = 1}};
                expect_refused(f, x, 2, EBADMSG, "'..'");
        }
        {
                Entry x[] = {
                        {.path = "manifests/registry.ollama.ai/library/../../etc", .data = "x", .size = 1}};
                expect_refused(f, x, 1, EBADMSG, "'..'");
        }
        {
                Entry x[] = {man, {.path = b0, .type = AE_IFLNK, .link = "/etc/shadow"}};
                expect_refused(f, x, 2, EBADMSG, "link");
        }
        {
                Entry x[] = {man, blob0, {.path = b1, .link = b0, .hardlink = true}};
                expect_refused(f, x, 3, EBADMSG, "link");
        }
        {
                Entry x[] = {man, {.path = b0, .type = AE_IFCHR}};
                expect_refused(f, x, 2, EBADMSG, "not a regular file");
        }
        {
                Entry x[] = {man, {.path = "blobs", .type = AE_IFDIR}};
                expect_refused(f, x, 2, EBADMSG, "not a regular file");
        }
        {
                /* Digest mismatch: the right size, the wrong bytes. */
                char *junk = calloc(1, 9);
                memcpy(junk, "Be bri3f.", 9);
                Entry x[] = {man, blob0, {.path = b1, .data = junk, .size = 9}, cfg};
                expect_refused(f, x, 4, EBADMSG, "corrupt");
                free(junk);
        }
        {
                /* A blob bigger than its manifest says. */
                Entry x[] = {man, blob0, {.path = b1, .data = "Be brief, really brief.", .size = 23}, cfg};
                expect_refused(f, x, 4, EMSGSIZE, "manifest says");
        }
        {
                /* A manifest declaring more than the import limit (a size bomb) is refused before reading
                 * on. */
                char *big = strdup(f->raw);
                char needle[64];
                snprintf(needle, sizeof(needle), "\"size\":%ju", (uintmax_t)f->m->layers[0].size);
                char *at = strstr(big, needle);
                assert_non_null(at);
                char *bomb = strdup_printf("%.*s\"size\":999999999999999%s", (int)(at - big), big,
                                           at + strlen(needle));
                Entry x[] = {{.path = mp, .data = bomb, .size = strlen(bomb)}, blob0};
                f->config.import_max_bytes = 1ULL << 30;
                expect_refused(f, x, 2, EMSGSIZE, "import limit");
                free(bomb);
                free(big);
        }
        {
                Entry x[] = {blob0, man};
                expect_refused(f, x, 2, EBADMSG, "manifest");
        }
        {
                Entry x[] = {man, blob0, blob1, cfg, {.path = "blobs/evil", .data = "x", .size = 1}};
                expect_refused(f, x, 5, EBADMSG, "unexpected entry");
        }
        {
                Entry x[] = {man, blob0, blob1, cfg, blob0};
                expect_refused(f, x, 5, EBADMSG, "twice");
        }
        {
                char other[96];
                snprintf(other, sizeof(other), "blobs/sha256-%064d", 0);
                Entry x[] = {man, blob0, {.path = other, .data = "x", .size = 1}};
                expect_refused(f, x, 3, EBADMSG, "does not use");
        }
        {
                Entry x[] = {man, blob0, cfg};
                expect_refused(f, x, 3, EBADMSG, "lacks blob");
        }
        {
                Entry x[] = {{.path = mp, .data = "{\"schemaVersion\":2}", .size = 19}};
                expect_refused(f, x, 1, EBADMSG, "invalid");
        }
        {
                Entry x[] = {{.path = "manifests/h/ns/only-three", .data = f->raw, .size = strlen(f->raw)}};
                expect_refused(f, x, 1, EBADMSG, "host/namespace/model/tag");
        }
        {
                Entry x[] = {{.path = "manifests/h/n s/m/t", .data = f->raw, .size = strlen(f->raw)}};
                expect_refused(f, x, 1, EBADMSG, "not a valid model name");
        }

        /* Not an archive at all, an empty file, a truncated archive. */
        QdError e = {};
        unsigned before = count_all(f);
        int fd = memfd_create("junk", MFD_CLOEXEC);
        assert_int_equal(write(fd, "hello, this is not a tar file at all\n", 37), 37);
        lseek(fd, 0, SEEK_SET);
        assert_int_equal(registry_import(f->dst, fd, NULL, NULL, NULL, NULL, NULL, &e), -EBADMSG);
        close(fd);
        fd = memfd_create("empty", MFD_CLOEXEC);
        assert_int_equal(registry_import(f->dst, fd, NULL, NULL, NULL, NULL, NULL, NULL), -EBADMSG);
        close(fd);
        Entry ok[] = {man, blob0, blob1, cfg};
        fd = build(f, ok, 4, false);
        struct stat st;
        fstat(fd, &st);
        assert_int_equal(ftruncate(fd, st.st_size / 2), 0);
        e = (QdError){};
        assert_int_equal(registry_import(f->dst, fd, NULL, NULL, NULL, NULL, NULL, &e), -EBADMSG);
        assert_non_null(strstr(e.msg, "damaged"));
        close(fd);
        assert_int_equal(count_all(f), before);

        /* Cancelled midway: nothing stays either. */
        atomic_bool cancel = true;
        fd = build(f, ok, 4, false);
        assert_int_equal(registry_import(f->dst, fd, NULL, NULL, NULL, &cancel, NULL, NULL), -ECANCELED);
        close(fd);
        assert_int_equal(count_all(f), before);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_format_from_filename),
                cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hostile_archives, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
