#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A desktop client of quantd over D-Bus, with GDBus from Debian's python3-gi.

Lists the models, then streams a generation: the Token signals of the call print as they come, the reply
brings the statistics. Ctrl-C cancels the generation with Cancel(serial).

    quantd-dbus-client.py [--system] [--num-predict N] [MODEL [PROMPT]]

The session bus reaches quantd --user, --system the system daemon. See org.quantd.Quantd1(5).
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

NAME = "org.quantd.Quantd1"
PATH = "/org/quantd/Quantd1"
MANAGER = "org.quantd.Quantd1.Manager"
REQUEST = "org.quantd.Quantd1.Request"


def list_models(bus):
    reply = bus.call_sync(NAME, PATH, MANAGER, "List", GLib.Variant("(a{sv})", ({},)),
                          GLib.VariantType("(a{sv})"), Gio.DBusCallFlags.NONE, -1, None)
    (result,) = reply.unpack()
    return result.get("models", [])


def generate(bus, model, prompt, num_predict):
    """Streams one generation; returns its statistics (a dict) or raises GLib.Error."""
    loop = GLib.MainLoop()
    state = {"serial": None, "result": None, "error": None}

    def on_token(connection, sender, path, interface, member, parameters):
        request_id, event = parameters.unpack()
        # Signals come to this caller alone; the id tells which of its calls they belong to.
        if request_id != state["serial"]:
            return
        text = event.get("text", "")
        if isinstance(text, list):  # bytes that are not UTF-8 arrive as ay
            text = bytes(text).decode("utf-8", "replace")
        sys.stdout.write(text)
        sys.stdout.flush()

    def on_reply(connection, res):
        try:
            reply = connection.send_message_with_reply_finish(res)
            reply.to_gerror()
            (state["result"],) = reply.get_body().unpack()
        except GLib.Error as e:
            state["error"] = e
        loop.quit()

    def on_interrupt():
        if state["serial"] is not None:
            bus.call(NAME, PATH, MANAGER, "Cancel", GLib.Variant("(ta{sv})", (state["serial"], {})),
                     None, Gio.DBusCallFlags.NONE, -1, None, None)
        return GLib.SOURCE_CONTINUE

    subscription = bus.signal_subscribe(None, REQUEST, "Token", None, None, Gio.DBusSignalFlags.NONE, on_token)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, on_interrupt)

    options = {"num_predict": GLib.Variant("x", num_predict)}
    message = Gio.DBusMessage.new_method_call(NAME, PATH, MANAGER, "Generate")
    message.set_body(GLib.Variant("(ssa{sv})", (model, prompt, {"options": GLib.Variant("a{sv}", options)})))
    # A generation replies when it is done: no timeout.
    state["serial"] = bus.send_message_with_reply(message, Gio.DBusSendMessageFlags.NONE, GLib.MAXINT, None,
                                                  on_reply)
    loop.run()
    bus.signal_unsubscribe(subscription)
    if state["error"]:
        raise state["error"]
    return state["result"]


def main():
    parser = argparse.ArgumentParser(description="List quantd's models and stream a generation over D-Bus.")
    parser.add_argument("--system", action="store_true", help="talk to the system daemon")
    parser.add_argument("--num-predict", type=int, default=128, help="tokens to generate (default 128)")
    parser.add_argument("model", nargs="?", help="the model to generate with")
    parser.add_argument("prompt", nargs="?", default="Once upon a time", help="the prompt")
    args = parser.parse_args()

    bus = Gio.bus_get_sync(Gio.BusType.SYSTEM if args.system else Gio.BusType.SESSION, None)
    try:
        models = list_models(bus)
        for m in models:
            print(f"{m['name']:40} {m['size']:>14} bytes")
        if not args.model:
            return 0
        stats = generate(bus, args.model, args.prompt, args.num_predict)
    except GLib.Error as e:
        # The D-Bus error name (org.quantd.Quantd1.Error.*) and the daemon's sentence.
        name = Gio.DBusError.get_remote_error(e)
        sentence = e.message.removeprefix(f"GDBus.Error:{name}: ")
        print(f"\n{name}: {sentence}", file=sys.stderr)
        return 1
    print()
    seconds = stats.get("eval_duration_ns", 0) / 1e9
    rate = stats.get("eval_count", 0) / seconds if seconds > 0 else 0
    print(f"{stats.get('eval_count', 0)} tokens ({stats.get('done_reason', '?')}), {rate:.1f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
