/* SPDX-License-Identifier: MIT */
/* libFuzzer target for the safetensors reader: any input must parse or fail cleanly; tensors it vouched for are
 * read whole. */

#include <sys/mman.h>
#include <unistd.h>

#include "quant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Safetensors *s = NULL;
        QdError err = {};
        int fd = memfd_create("fuzz", MFD_CLOEXEC);

        if (fd < 0)
                return 0;
        if (write(fd, data, size) != (ssize_t)size) {
                close(fd);
                return 0;
        }
        if (safetensors_open_fd(fd, "fuzz", &s, &err) >= 0) {
                volatile uint8_t sink = 0;

                for (size_t i = 0; i < safetensors_n_tensors(s); i++) {
                        const SafetensorsTensor *t = safetensors_tensor(s, i);
                        const uint8_t *p = t->data;

                        if (t->size > 0)
                                sink ^= p[0] ^ p[t->size - 1];
                }
                (void)sink;
        }
        safetensors_free(s);
        close(fd);
        return 0;
}
