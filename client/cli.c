/* SPDX-License-Identifier: MIT */
/*
 * qctl's command line: the table of verbs with their help and options, the parsing of a verb's arguments into
 * a Command, exit codes and the prompt of `qctl run`. No I/O beyond reading the arguments, so that tests
 * cover every usage error.
 *
 * DESIGN
 * Each verb lists the options it accepts; getopt_long() parses them with the verb's own table, so an option
 * of one verb is an error for another. GNU getopt moves the arguments behind the options, so the two may be
 * mixed (`qctl run m "hi" -o seed=1`); "--" ends the options, for a prompt that starts with '-'.
 */

#include <getopt.h>
#include <strings.h>

#include "client.h"

enum {
        ARG_FORMAT = 0x100,
        ARG_KEEPALIVE,
        ARG_NOWORDWRAP,
        ARG_INSECURE,
        ARG_JSON,
        ARG_MODELFILE,
        ARG_PARAMETERS,
        ARG_TEMPLATE,
        ARG_SYSTEM,
        ARG_LICENSE,
        ARG_PURE,
        ARG_LEAVE_OUTPUT,
        ARG_ALLOW_REQUANTIZE,
        ARG_TENSOR_TYPE,
        ARG_BASE,
        ARG_CHUNKS,
};

typedef struct Verb {
        const char *name, *alias;
        const char *synopsis;    /* after "qctl NAME " */
        const char *description; /* one line for `qctl --help`, first line of `qctl NAME --help` */
        const char *options;     /* the help's option lines */
        const char *shortopts;
        const struct option *longopts;
        size_t min_args, max_args; /* positional; SIZE_MAX: any number */
} Verb;

#define HELP_OPTION "  -h --help                 show this help\n"

static const struct option run_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "verbose", no_argument, NULL, 'v' },
        { "format", required_argument, NULL, ARG_FORMAT },
        { "keepalive", required_argument, NULL, ARG_KEEPALIVE },
        { "nowordwrap", no_argument, NULL, ARG_NOWORDWRAP },
        { "option", required_argument, NULL, 'o' },
        { "insecure", no_argument, NULL, ARG_INSECURE },
        {},
};

static const struct option net_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "insecure", no_argument, NULL, ARG_INSECURE },
        {},
};

static const struct option create_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "file", required_argument, NULL, 'f' },
        { "quantize", required_argument, NULL, 'q' },
        {},
};

static const struct option json_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "json", no_argument, NULL, ARG_JSON },
        {},
};

static const struct option show_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "json", no_argument, NULL, ARG_JSON },
        { "modelfile", no_argument, NULL, ARG_MODELFILE },
        { "parameters", no_argument, NULL, ARG_PARAMETERS },
        { "template", no_argument, NULL, ARG_TEMPLATE },
        { "system", no_argument, NULL, ARG_SYSTEM },
        { "license", no_argument, NULL, ARG_LICENSE },
        { "verbose", no_argument, NULL, 'v' },
        {},
};

static const struct option quantize_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "force", no_argument, NULL, 'f' },
        { "pure", no_argument, NULL, ARG_PURE },
        { "leave-output-tensor", no_argument, NULL, ARG_LEAVE_OUTPUT },
        { "allow-requantize", no_argument, NULL, ARG_ALLOW_REQUANTIZE },
        { "tensor-type", required_argument, NULL, ARG_TENSOR_TYPE },
        {},
};

static const struct option export_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "force", no_argument, NULL, 'f' },
        {},
};

static const struct option eval_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "file", required_argument, NULL, 'f' },
        { "base", required_argument, NULL, ARG_BASE },
        { "ctx-size", required_argument, NULL, 'c' },
        { "chunks", required_argument, NULL, ARG_CHUNKS },
        { "json", no_argument, NULL, ARG_JSON },
        {},
};

static const struct option help_only[] = {
        { "help", no_argument, NULL, 'h' },
        {},
};

static const Verb verbs[_VERB_MAX] = {
        [VERB_RUN] = {
                .name = "run",
                .synopsis = "MODEL [PROMPT...]",
                .description = "generate a response, or chat when no prompt is given",
                .options = HELP_OPTION
                           "  -o --option NAME=VALUE    set a model parameter (repeatable; modelfile(5) lists them)\n"
                           "     --format json          answer in JSON\n"
                           "     --keepalive DURATION   keep the model loaded this long (5m, 1h, 0, -1 forever)\n"
                           "     --nowordwrap           print tokens as they come, without wrapping words\n"
                           "  -v --verbose              print timings and token rates at the end\n"
                           "     --insecure             pull over plain HTTP if the model is missing\n",
                .shortopts = ":hvo:",
                .longopts = run_options,
                .min_args = 1,
                .max_args = SIZE_MAX,
        },
        [VERB_PULL] = {
                .name = "pull",
                .synopsis = "MODEL",
                .description = "download a model from a registry",
                .options = HELP_OPTION "     --insecure             allow plain HTTP and unverified TLS\n",
                .shortopts = ":h",
                .longopts = net_options,
                .min_args = 1,
                .max_args = 1,
        },
        [VERB_PUSH] = {
                .name = "push",
                .synopsis = "MODEL",
                .description = "upload a model to a registry",
                .options = HELP_OPTION "     --insecure             allow plain HTTP and unverified TLS\n",
                .shortopts = ":h",
                .longopts = net_options,
                .min_args = 1,
                .max_args = 1,
        },
        [VERB_CREATE] = {
                .name = "create",
                .synopsis = "MODEL [-f MODELFILE] [-q TYPE]",
                .description = "create a model from a Modelfile",
                .options = HELP_OPTION
                           "  -f --file PATH            the Modelfile (default: ./Modelfile)\n"
                           "  -q --quantize TYPE        quantize the weights, e.g. q4_K_M, q8_0\n",
                .shortopts = ":hf:q:",
                .longopts = create_options,
                .min_args = 1,
                .max_args = 1,
        },
        [VERB_LIST] = {
                .name = "list",
                .alias = "ls",
                .synopsis = "",
                .description = "list the models in the store",
                .options = HELP_OPTION "     --json                 print JSON instead of a table\n",
                .shortopts = ":h",
                .longopts = json_options,
                .min_args = 0,
                .max_args = 0,
        },
        [VERB_PS] = {
                .name = "ps",
                .synopsis = "",
                .description = "list the loaded models",
                .options = HELP_OPTION "     --json                 print JSON instead of a table\n",
                .shortopts = ":h",
                .longopts = json_options,
                .min_args = 0,
                .max_args = 0,
        },
        [VERB_SHOW] = {
                .name = "show",
                .synopsis = "MODEL",
                .description = "show a model's details",
                .options = HELP_OPTION
                           "     --modelfile            print the model's Modelfile\n"
                           "     --parameters           print its parameters\n"
                           "     --template             print its template\n"
                           "     --system               print its system message\n"
                           "     --license              print its license\n"
                           "  -v --verbose              print all GGUF metadata too\n"
                           "     --json                 print everything as JSON\n",
                .shortopts = ":hv",
                .longopts = show_options,
                .min_args = 1,
                .max_args = 1,
        },
        [VERB_CP] = {
                .name = "cp",
                .synopsis = "SOURCE DESTINATION",
                .description = "copy a model",
                .options = HELP_OPTION,
                .shortopts = ":h",
                .longopts = help_only,
                .min_args = 2,
                .max_args = 2,
        },
        [VERB_RM] = {
                .name = "rm",
                .synopsis = "MODEL...",
                .description = "remove models",
                .options = HELP_OPTION,
                .shortopts = ":h",
                .longopts = help_only,
                .min_args = 1,
                .max_args = SIZE_MAX,
        },
        [VERB_STOP] = {
                .name = "stop",
                .synopsis = "MODEL",
                .description = "unload a running model",
                .options = HELP_OPTION,
                .shortopts = ":h",
                .longopts = help_only,
                .min_args = 1,
                .max_args = 1,
        },
        [VERB_QUANTIZE] = {
                .name = "quantize",
                .synopsis = "SRC.gguf DST.gguf TYPE",
                .description = "quantize a GGUF file into a new one, e.g. with TYPE q4_K_M",
                .options = HELP_OPTION
                           "  -f --force                replace DST if it exists\n"
                           "     --pure                 every tensor gets TYPE's default type: no promotions\n"
                           "     --leave-output-tensor  copy output.weight as it is\n"
                           "     --allow-requantize     convert tensors that are already quantized\n"
                           "     --tensor-type PATTERN=TYPE\n"
                           "                            tensors whose name matches the regular expression\n"
                           "                            PATTERN get TYPE, e.g. attn_v=q8_0 (repeatable)\n",
                .shortopts = ":hf",
                .longopts = quantize_options,
                .min_args = 3,
                .max_args = 3,
        },
        [VERB_EVAL] = {
                .name = "eval",
                .synopsis = "MODEL --file TEXT [--base MODEL]",
                .description = "measure a model's perplexity, and its loss against a base model",
                .options = HELP_OPTION
                           "  -f --file TEXT            the text to score (required)\n"
                           "     --base MODEL           compare with MODEL: KL divergence, top-1 agreement\n"
                           "  -c --ctx-size N           tokens per chunk (default 512)\n"
                           "     --chunks N             score at most N chunks (default: all)\n"
                           "     --json                 print the figures as JSON\n"
                           "MODEL and --base are GGUF files when they end in .gguf or name an existing\n"
                           "file, models in the store otherwise.\n",
                .shortopts = ":hf:c:",
                .longopts = eval_options,
                .min_args = 1,
                .max_args = 1,
        },
        [VERB_EXPORT] = {
                .name = "export",
                .synopsis = "MODEL FILE",
                .description = "write a model to an archive that a Modelfile FROM reads",
                .options = HELP_OPTION "  -f --force                replace FILE if it exists\n"
                                       "FILE ends in .tar, .tar.gz, .tgz or .tar.zst.\n",
                .shortopts = ":hf",
                .longopts = export_options,
                .min_args = 2,
                .max_args = 2,
        },
        [VERB_IMPORT] = {
                .name = "import",
                .synopsis = "FILE [MODEL]",
                .description = "add the model of an archive that export wrote",
                .options = HELP_OPTION "Without MODEL the model keeps the archive's name, which must be free.\n",
                .shortopts = ":h",
                .longopts = help_only,
                .min_args = 1,
                .max_args = 2,
        },
        [VERB_VERSION] = {
                .name = "version",
                .synopsis = "",
                .description = "show the client's and the daemon's versions",
                .options = HELP_OPTION,
                .shortopts = ":h",
                .longopts = help_only,
                .min_args = 0,
                .max_args = 0,
        },
};

const char *verb_to_string(VerbId v) {
        return v >= 0 && v < _VERB_MAX ? verbs[v].name : NULL;
}

VerbId verb_from_string(const char *s) {
        for (int i = 0; s && i < _VERB_MAX; i++)
                if (streq(verbs[i].name, s) || streq_ptr(verbs[i].alias, s))
                        return (VerbId)i;
        return _VERB_INVALID;
}

int verb_help(VerbId v, Buf *out) {
        const Verb *vb = &verbs[v];
        int r;

        r = buf_printf(out, "Usage: qctl %s%s%s\n\n%c%s.\n", vb->name, *vb->synopsis ? " " : "", vb->synopsis,
                       vb->description[0] - 'a' + 'A', vb->description + 1);
        if (r >= 0 && vb->alias)
                r = buf_printf(out, "Also: qctl %s.\n", vb->alias);
        if (r >= 0)
                r = buf_printf(out, "\nOptions:\n%s\nSee qctl(1).\n", vb->options);
        return r;
}

int verbs_summary(Buf *out) {
        int r = 0;

        for (int i = 0; r >= 0 && i < _VERB_MAX; i++) {
                char left[64];
                snprintf(left, sizeof(left), "%s%s%s%s%s", verbs[i].name, verbs[i].alias ? ", " : "",
                         strempty(verbs[i].alias), *verbs[i].synopsis ? " " : "", verbs[i].synopsis);
                r = buf_printf(out, "  %-38s %s\n", left, verbs[i].description);
        }
        return r;
}

static int strv_append(char ***l, size_t *n, const char *s) {
        char **nl = reallocarray(*l, *n + 2, sizeof(char *));
        if (!nl)
                return -ENOMEM;
        *l = nl;
        nl[*n] = strdup(s);
        if (!nl[*n])
                return -ENOMEM;
        nl[++*n] = NULL;
        return 0;
}

static int set_show(Command *c, ShowWhat w, const char *verb, QdError *e) {
        if (c->show != SHOW_INFO && c->show != w)
                return qd_error_set(e, EINVAL,
                                    "qctl %s: choose one of --modelfile, --parameters, --template, --system and "
                                    "--license.",
                                    verb);
        c->show = w;
        return 0;
}

int command_parse(Command *c, int argc, char **argv, QdError *e) {
        int r;

        *c = (Command){};
        if (argc < 1)
                return qd_error_set(e, EINVAL, "Missing command: see 'qctl --help'.");
        VerbId v = verb_from_string(argv[0]);
        if (v < 0)
                return qd_error_set(e, ENOENT, "Unknown command '%s': see 'qctl --help'.", argv[0]);
        const Verb *vb = &verbs[v];
        c->verb = v;

        /* optind 0 makes glibc start over, as every call parses a fresh argv. */
        optind = 0;
        opterr = 0;
        for (;;) {
                int o = getopt_long(argc, argv, vb->shortopts, vb->longopts, NULL);
                if (o < 0)
                        break;
                switch (o) {
                case 'h':
                        c->help = true;
                        break;
                case 'v':
                        c->verbose = true;
                        break;
                case 'o': {
                        QdError pe = {};
                        r = param_set_add_assignment(&c->params, optarg, &pe);
                        if (r == -ENOMEM)
                                return r;
                        if (r < 0)
                                return qd_error_set(e, EINVAL, "qctl %s -o: %s.", vb->name, pe.msg);
                        break;
                }
                case ARG_FORMAT:
                        if (!streq(optarg, "json"))
                                return qd_error_set(e, EINVAL, "qctl %s --format: expected 'json', found '%s'.",
                                                    vb->name, optarg);
                        free(c->format);
                        c->format = strdup(optarg);
                        if (!c->format)
                                return -ENOMEM;
                        break;
                case ARG_KEEPALIVE:
                        if (parse_duration_ns(optarg, &c->keepalive_ns) < 0)
                                return qd_error_set(e, EINVAL,
                                                    "qctl %s --keepalive: expected a duration such as 5m, 1h30m, 0 "
                                                    "or -1, found '%s'.",
                                                    vb->name, optarg);
                        c->has_keepalive = true;
                        break;
                case ARG_NOWORDWRAP:
                        c->nowordwrap = true;
                        break;
                case ARG_INSECURE:
                        c->insecure = true;
                        break;
                case ARG_JSON:
                        c->json = true;
                        break;
                case 'f':
                        if (v == VERB_QUANTIZE || v == VERB_EXPORT) {
                                c->force = true;
                                break;
                        }
                        free(c->file);
                        c->file = strdup(optarg);
                        if (!c->file)
                                return -ENOMEM;
                        break;
                case 'q':
                        free(c->quantize);
                        c->quantize = strdup(optarg);
                        if (!c->quantize)
                                return -ENOMEM;
                        break;
                case ARG_MODELFILE:
                case ARG_PARAMETERS:
                case ARG_TEMPLATE:
                case ARG_SYSTEM:
                case ARG_LICENSE:
                        r = set_show(c, SHOW_MODELFILE + (o - ARG_MODELFILE), vb->name, e);
                        if (r < 0)
                                return r;
                        break;
                case ARG_PURE:
                        c->pure = true;
                        break;
                case ARG_LEAVE_OUTPUT:
                        c->leave_output = true;
                        break;
                case ARG_ALLOW_REQUANTIZE:
                        c->allow_requantize = true;
                        break;
                case ARG_TENSOR_TYPE: {
                        const char *eq = strrchr(optarg, '=');
                        if (!eq || eq == optarg || !eq[1])
                                return qd_error_set(e, EINVAL,
                                                    "qctl %s --tensor-type: expected PATTERN=TYPE such as "
                                                    "attn_v=q8_0, found '%s'.",
                                                    vb->name, optarg);
                        r = strv_append(&c->tensor_types, &c->n_tensor_types, optarg);
                        if (r < 0)
                                return r;
                        break;
                }
                case ARG_BASE:
                        free(c->base);
                        c->base = strdup(optarg);
                        if (!c->base)
                                return -ENOMEM;
                        break;
                case 'c':
                case ARG_CHUNKS: {
                        uint64_t u;
                        if (safe_atou64(optarg, &u) < 0 || u == 0 || u > UINT32_MAX)
                                return qd_error_set(e, EINVAL,
                                                    "qctl %s %s: expected a positive number, found '%s'.",
                                                    vb->name, o == 'c' ? "-c" : "--chunks", optarg);
                        *(o == 'c' ? &c->n_ctx : &c->chunks) = (uint32_t)u;
                        break;
                }
                case ':':
                        return qd_error_set(e, EINVAL, "qctl %s: option '%s' needs a value: see 'qctl %s --help'.",
                                            vb->name, argv[optind - 1], vb->name);
                default:
                        if (optopt > 0 && optopt < 0x100)
                                return qd_error_set(e, EINVAL, "qctl %s: unknown option '-%c': see 'qctl %s --help'.",
                                                    vb->name, optopt, vb->name);
                        return qd_error_set(e, EINVAL, "qctl %s: unknown option '%s': see 'qctl %s --help'.",
                                            vb->name, argv[optind - 1], vb->name);
                }
        }
        for (; optind < argc; optind++) {
                r = strv_append(&c->args, &c->n_args, argv[optind]);
                if (r < 0)
                        return r;
        }
        if (!c->args) {
                c->args = calloc(1, sizeof(char *));
                if (!c->args)
                        return -ENOMEM;
        }
        if (c->help)
                return 0;

        if (c->n_args < vb->min_args) {
                static const char *const quantize_missing[] = { "SRC.gguf, DST.gguf and TYPE",
                                                                 "DST.gguf and TYPE", "TYPE" };
                return qd_error_set(e, EINVAL, "qctl %s: missing %s: see 'qctl %s --help'.", vb->name,
                                    c->n_args == 0 && v == VERB_CP         ? "SOURCE and DESTINATION"
                                    : v == VERB_CP                         ? "DESTINATION"
                                    : c->n_args == 0 && v == VERB_EXPORT   ? "MODEL and FILE"
                                    : v == VERB_EXPORT || v == VERB_IMPORT ? "FILE"
                                    : v == VERB_QUANTIZE                   ? quantize_missing[c->n_args]
                                                                           : "MODEL",
                                    vb->name);
        }
        if (c->n_args > vb->max_args)
                return qd_error_set(e, EINVAL, "qctl %s: unexpected argument '%s': see 'qctl %s --help'.", vb->name,
                                    c->args[vb->max_args], vb->name);
        if (v == VERB_EVAL && !c->file)
                return qd_error_set(e, EINVAL,
                                    "qctl eval: missing --file TEXT: see 'qctl eval --help'.");
        if (v == VERB_CREATE && !c->file) {
                c->file = strdup("Modelfile");
                if (!c->file)
                        return -ENOMEM;
        }
        if (v == VERB_SHOW && c->json && c->show != SHOW_INFO)
                return qd_error_set(e, EINVAL, "qctl show: --json prints everything, so it takes no --%s.",
                                    c->show == SHOW_MODELFILE    ? "modelfile"
                                    : c->show == SHOW_PARAMETERS ? "parameters"
                                    : c->show == SHOW_TEMPLATE   ? "template"
                                    : c->show == SHOW_SYSTEM     ? "system"
                                                                 : "license");
        return 0;
}

void command_done(Command *c) {
        strv_free(c->args);
        free(c->format);
        free(c->file);
        free(c->quantize);
        strv_free(c->tensor_types);
        free(c->base);
        param_set_done(&c->params);
        *c = (Command){};
}

int exit_code_from_errno(int r) {
        switch (abs(r)) {
        case 0:
                return QCTL_EXIT_OK;
        case EINVAL:
        case ERANGE:
        case ENAMETOOLONG:
                return QCTL_EXIT_USAGE;
        case ECONNREFUSED:
        case ENOTCONN:
        case ECONNRESET:
        case EPIPE:
        case EPROTONOSUPPORT:
                return QCTL_EXIT_NO_DAEMON;
        case ENOENT:
                return QCTL_EXIT_NOT_FOUND;
        case EOPNOTSUPP:
                return QCTL_EXIT_UNSUPPORTED;
        case EBADMSG:
                return QCTL_EXIT_BAD_INPUT;
        case ECANCELED:
        case EINTR:
                return QCTL_EXIT_INTERRUPTED;
        default:
                return QCTL_EXIT_FAILURE;
        }
}

int build_prompt(char *const *words, const char *stdin_text, char **ret) {
        Buf b = {};
        int r = 0;

        for (size_t i = 0; r >= 0 && words && words[i]; i++)
                r = buf_printf(&b, "%s%s", i > 0 ? " " : "", words[i]);
        if (r >= 0 && stdin_text) {
                size_t n = strlen(stdin_text);
                while (n > 0 && (stdin_text[n - 1] == '\n' || stdin_text[n - 1] == '\r'))
                        n--;
                if (n > 0) {
                        if (b.len > 0)
                                r = buf_append_str(&b, "\n\n");
                        if (r >= 0)
                                r = buf_append(&b, stdin_text, n);
                }
        }
        if (r < 0) {
                buf_free(&b);
                return r;
        }
        if (b.len == 0) {
                buf_free(&b);
                *ret = NULL;
                return 0;
        }
        *ret = buf_steal_str(&b);
        return 0;
}
