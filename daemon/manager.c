/* SPDX-License-Identifier: MIT */
/*
 * The Manager: owns the sd-event loop and everything the main thread touches (connections, the job table,
 * the scheduler, the store), the mailbox other threads post to, and the daemon's lifecycle with systemd
 * (READY=1, STATUS=, STOPPING=1, SIGTERM).
 *
 * DESIGN
 * Worker and executor threads never touch main-thread state. They call manager_post(), which appends a
 * closure to a locked list and writes the eventfd; the loop runs the closures in order. Signals are blocked
 * before the first thread starts, so SIGTERM is only ever seen by sd-event's signalfd.
 */

#include <signal.h>
#include <sys/eventfd.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "daemon-internal.h"

int manager_post(Manager *m, void (*fn)(Manager *m, void *userdata), void *userdata) {
        Post *p = malloc(sizeof(*p));
        if (!p)
                return -ENOMEM;
        *p = (Post){.fn = fn, .userdata = userdata};
        pthread_mutex_lock(&m->post_lock);
        bool wake = !m->post_head;
        if (m->post_tail)
                m->post_tail->next = p;
        else
                m->post_head = p;
        m->post_tail = p;
        pthread_mutex_unlock(&m->post_lock);

        /* Only the first post of a batch wakes the loop: the drain takes the whole list, and a post that
         * finds the list non-empty is taken by a drain that has not happened yet. */
        if (wake) {
                uint64_t one = 1;
                (void)write(m->post_fd, &one, sizeof(one));
        }
        return 0;
}

void manager_post_drain(Manager *m) {
        for (;;) {
                pthread_mutex_lock(&m->post_lock);
                Post *list = m->post_head;
                m->post_head = m->post_tail = NULL;
                pthread_mutex_unlock(&m->post_lock);
                if (!list)
                        return;
                while (list) {
                        Post *p = list;
                        list = p->next;
                        p->fn(m, p->userdata);
                        free(p);
                }
        }
}

static int post_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;
        uint64_t n;

        (void)read(fd, &n, sizeof(n));
        manager_post_drain(m);
        return 0;
}

int manager_post_init(Manager *m) {
        m->post_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (m->post_fd < 0)
                return negative_errno();
        return sd_event_add_io(m->event, &m->post_source, m->post_fd, EPOLLIN, post_io, m);
}

void manager_post_done(Manager *m) {
        manager_post_drain(m);
        m->post_source = sd_event_source_disable_unref(m->post_source);
        m->post_fd = safe_close(m->post_fd);
}

sd_event *manager_event(Manager *m) {
        return m->event;
}

const DaemonConfig *manager_config(const Manager *m) {
        return &m->config;
}

static uint64_t physical_memory(void) {
        long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

int manager_new(Manager **ret, DaemonConfig *c, const ManagerOptions *o) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int k;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->config = *c;
        *c = (DaemonConfig){};
        m->listen_fd = -EBADF;
        m->post_fd = -EBADF;
        m->next_job_id = 1;
        m->user = o->user;
        m->backend = o->backend;
        m->store_ops = o->store;
        pthread_mutex_init(&m->post_lock, NULL);
        m->socket_path = strdup(o->socket);
        m->models_path = strdup(o->models);
        m->config_path = o->config_path ? strdup(o->config_path) : NULL;
        if (!m->socket_path || !m->models_path || (o->config_path && !m->config_path))
                return -ENOMEM;
        if (m->config.memory_budget == 0)
                m->config.memory_budget = physical_memory() / 4 * 3;
        if (m->config.log_level >= 0)
                log_set_max_level(m->config.log_level);

        k = sd_event_default(&m->event);
        if (k < 0)
                return k;
        k = manager_post_init(m);
        if (k < 0)
                return k;
        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        m->stopping = true;
        /* Clients first: their generations are cancelled before the executors stop. */
        server_done(m);
        if (m->scheduler)
                scheduler_stop(m->scheduler);
        m->pool = job_pool_free(m->pool);
        m->scheduler = scheduler_free(m->scheduler);
        manager_post_drain(m);
        jobs_free_all(m);
        if (m->store && m->store_ops)
                m->store_ops->close(m->store);
        m->sigterm_source = sd_event_source_disable_unref(m->sigterm_source);
        m->sigint_source = sd_event_source_disable_unref(m->sigint_source);
        manager_post_done(m);
        sd_event_unref(m->event);
        pthread_mutex_destroy(&m->post_lock);
        free(m->socket_path);
        free(m->models_path);
        free(m->config_path);
        daemon_config_done(&m->config);
        free(m);
        return NULL;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        log_info("Received %s, stopping.", strsignal((int)si->ssi_signo));
        (void)sd_notify(false, "STOPPING=1\nSTATUS=Stopping: cancelling generations and jobs.");
        m->stopping = true;
        return sd_event_exit(m->event, 0);
}

int manager_run(Manager *m) {
        QdError err = {};
        sigset_t ss;
        int k;

        /* Before any thread exists: signals go to sd-event's signalfd only. */
        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGPIPE);
        if (pthread_sigmask(SIG_BLOCK, &ss, NULL) != 0)
                return log_error_errno(EINVAL, "Failed to block signals.");
        k = sd_event_add_signal(m->event, &m->sigterm_source, SIGTERM, on_signal, m);
        if (k >= 0)
                k = sd_event_add_signal(m->event, &m->sigint_source, SIGINT, on_signal, m);
        if (k < 0)
                return log_error_errno(k, "Failed to watch SIGTERM: %m");

        k = m->store_ops->open(m->models_path, m->config_path, &m->store, &err);
        if (k < 0)
                return log_error_errno(k, "Failed to open the model store %s: %s", m->models_path, err.msg);
        k = job_pool_new(m, m->config.workers, &m->pool);
        if (k < 0)
                return log_error_errno(k, "Failed to start %u job workers: %m", m->config.workers);
        k = scheduler_new(m, &m->scheduler);
        if (k < 0)
                return log_error_errno(k, "Failed to start the scheduler: %m");
        k = server_listen(m);
        if (k < 0)
                return k;

        m->started_ns = now_ns();
        (void)sd_notifyf(false, "READY=1\nSTATUS=Serving on %s (models in %s).", m->socket_path,
                         m->models_path);
        log_info("quantd %s ready: models in %s, %u workers.", PACKAGE_VERSION, m->models_path,
                 m->config.workers);

        k = sd_event_loop(m->event);
        if (k < 0)
                return log_error_errno(k, "The event loop failed: %m");
        return 0;
}
