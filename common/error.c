/* SPDX-License-Identifier: MIT */
/*
 * errno names and QdError. The names are what travels on the wire ({code: "ENOENT", …}), so the table is the
 * fixed set the protocol documents plus the few that system calls commonly hand us.
 */

#include "common.h"

static const struct {
        int error;
        const char *name;
} errno_names[] = {
        { EPERM, "EPERM" },         { ENOENT, "ENOENT" },       { EIO, "EIO" },
        { E2BIG, "E2BIG" },         { EBADF, "EBADF" },         { EAGAIN, "EAGAIN" },
        { ENOMEM, "ENOMEM" },       { EACCES, "EACCES" },       { EBUSY, "EBUSY" },
        { EEXIST, "EEXIST" },       { ENOTDIR, "ENOTDIR" },     { EISDIR, "EISDIR" },
        { EINVAL, "EINVAL" },       { EMFILE, "EMFILE" },       { EFBIG, "EFBIG" },
        { ENOSPC, "ENOSPC" },       { EROFS, "EROFS" },         { EPIPE, "EPIPE" },
        { ERANGE, "ERANGE" },       { ENAMETOOLONG, "ENAMETOOLONG" },
        { ENOSYS, "ENOSYS" },       { ENOTEMPTY, "ENOTEMPTY" }, { ENODATA, "ENODATA" },
        { ETIME, "ETIME" },         { EPROTO, "EPROTO" },       { EBADMSG, "EBADMSG" },
        { EOVERFLOW, "EOVERFLOW" }, { EILSEQ, "EILSEQ" },       { EMSGSIZE, "EMSGSIZE" },
        { EPROTONOSUPPORT, "EPROTONOSUPPORT" },                 { EOPNOTSUPP, "EOPNOTSUPP" },
        { EADDRINUSE, "EADDRINUSE" },                           { ENETUNREACH, "ENETUNREACH" },
        { ECONNABORTED, "ECONNABORTED" },                       { ECONNRESET, "ECONNRESET" },
        { ENOBUFS, "ENOBUFS" },     { ETIMEDOUT, "ETIMEDOUT" }, { ECONNREFUSED, "ECONNREFUSED" },
        { EHOSTUNREACH, "EHOSTUNREACH" },                       { EALREADY, "EALREADY" },
        { EINPROGRESS, "EINPROGRESS" },                         { ESTALE, "ESTALE" },
        { EDQUOT, "EDQUOT" },       { ECANCELED, "ECANCELED" }, { EKEYREJECTED, "EKEYREJECTED" },
        { ENOMEDIUM, "ENOMEDIUM" }, { ENOTCONN, "ENOTCONN" },   { ESHUTDOWN, "ESHUTDOWN" },
        { EUCLEAN, "EUCLEAN" },     { ENOKEY, "ENOKEY" },       { ENOEXEC, "ENOEXEC" },
};

const char *errno_to_name(int error) {
        error = abs(error);
        for (size_t i = 0; i < ELEMENTSOF(errno_names); i++)
                if (errno_names[i].error == error)
                        return errno_names[i].name;
        return NULL;
}

int errno_from_name(const char *name) {
        if (!name)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(errno_names); i++)
                if (streq(errno_names[i].name, name))
                        return errno_names[i].error;
        return -EINVAL;
}

int qd_error_set(QdError *e, int error, const char *fmt, ...) {
        int r = error == 0 ? -EIO : -abs(error);

        if (!e || e->code != 0)
                return r;
        e->code = -r;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
        return r;
}

void qd_error_clear(QdError *e) {
        if (!e)
                return;
        e->code = 0;
        e->msg[0] = 0;
}
