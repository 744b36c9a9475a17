// SPDX-License-Identifier: MIT

// Reference renderings of Modelfile TEMPLATEs by Go's own text/template package, for the template engine's
// tests. Chats are turned into template data the way Ollama does it: consecutive messages of one role joined
// by a blank line, the Modelfile SYSTEM first when the chat has no system message; a template that uses
// .Messages is executed once over the whole chat (with .System the system messages joined), an older one once
// per turn of .System/.Prompt/.Response with the last turn cut after its first {{ .Response }} action.
//
// Output, one line per rendering: name, then in hex: the template, the SYSTEM, the chat (role, 0x1f, content,
// 0x1e per message), and the output, or "-" when Go refuses the template or fails to execute it.
//
//	apt-get install golang-go   # only to regenerate; the C tests read the output
//	go run tests/data/make-template-reference.go > tests/data/template-reference.tsv
package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"text/template"
	"text/template/parse"
)

type Message struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking,omitempty"`
	ToolName  string `json:"tool_name,omitempty"`
	Images    []any  `json:"images,omitempty"`
	ToolCalls []any  `json:"tool_calls,omitempty"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

var templates = []struct{ name, text string }{
	{"chatml", "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"},
	{"chatml-system", "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}" +
		"{{- range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n" +
		"{{ end }}{{ end }}<|im_start|>assistant\n"},
	{"llama3-legacy", "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}" +
		"{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}" +
		"<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"},
	{"llama31", "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>\n{{- end }}\n" +
		"{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n" +
		"{{- if eq .Role \"user\" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" +
		"{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n" +
		"{{- else if eq .Role \"assistant\" }}<|start_header_id|>assistant<|end_header_id|>\n\n" +
		"{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}\n{{- end }}\n{{- end }}"},
	{"gemma", "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n" +
		"{{- if or (eq .Role \"user\") (eq .Role \"system\") }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n" +
		"{{ if $last }}<start_of_turn>model\n{{ end }}\n{{- else if eq .Role \"assistant\" }}<start_of_turn>model\n" +
		"{{ .Content }}{{ if not $last }}<end_of_turn>\n{{ end }}\n{{- end }}\n{{- end }}"},
	{"phi3", "{{ range .Messages }}{{ if eq .Role \"system\" }}<|system|>\n{{ .Content }}<|end|>\n" +
		"{{ else if eq .Role \"user\" }}<|user|>\n{{ .Content }}<|end|>\n{{ else if eq .Role \"assistant\" }}" +
		"<|assistant|>\n{{ .Content }}<|end|>\n{{ end }}{{ end }}<|assistant|>\n"},
	{"mistral-legacy", "[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }} [/INST]"},
	{"vicuna-legacy", "{{ if .System }}{{ .System }}\n{{ end }}USER: {{ .Prompt }}\nASSISTANT: {{ .Response }}</s>"},
	{"cut-in-if", "{{ if .Prompt }}U: {{ .Prompt }}\n{{ end }}A: {{ if .Response }}{{ .Response }}{{ end }} END{{ .Prompt }}"},
	{"trim", "a  {{- .System -}}  \n b {{/* note */}}c{{- /* trimmed */ -}} d\n{{- range .Messages }} \n {{ .Role -}} \n {{ end -}} !"},
	{"literals", "{{ \"q\\\"\\n\\t\" }}{{ `raw\\n` }}{{ 42 }} {{ -3 }} {{ true }} {{ false }} {{ .Nothing }} {{ .Tools }}"},
	{"logic", "{{ eq 1 1 }} {{ eq \"a\" \"b\" \"a\" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt \"b\" \"a\" }} " +
		"{{ ge 1 2 }} {{ not 0 }} {{ not .Messages }} {{ and 1 \"\" 3 }}|{{ or 0 \"\" 3 }} {{ or 0 \"\" }}|{{ and 1 2 }}" +
		"{{ if and .Messages (index .Messages 0) }} first={{ (index .Messages 0).Role }}{{ end }}"},
	{"functions", "{{ len .Messages }} {{ len .System }} {{ len (slice .Messages 1) }} {{ slice \"hello\" 1 3 }} " +
		"{{ slice \"hello\" 2 }} {{ index \"A\" 0 }} {{ $n := len .Messages }}{{ $n = 7 }}{{ $n }} " +
		"{{ .Messages | len }} {{ \"x\" | eq \"x\" }} {{ 2 | print 1 }} {{ print \"a\" 1 2 \"b\" true }} " +
		"{{ printf \"%s-%d-%v%%\" \"s\" 4 true }} {{ json .Messages }} {{ json .System }}"},
	{"range-vars", "{{ range $i, $m := .Messages }}{{ $i }}={{ $m.Role }}/{{ len $.Messages }}" +
		"{{ range $.Messages }}.{{ end }};{{ else }}none{{ end }}" +
		"{{ range $m := .Messages }}[{{ $m.Content }}]{{ end }}"},
	{"with", "{{ with .System }}[{{ . }}]{{ else }}no system{{ end }}{{ with .Messages }}{{ len . }}{{ end }}" +
		"{{ with $x := .System }}{{ $x }}{{ end }}"},
	{"fields", "{{ range .Messages }}{{ if .ToolCalls }}T{{ end }}{{ if .Images }}I{{ end }}{{ .Thinking }}" +
		"{{ .Role }}{{ end }}{{ if .Tools }}tools{{ end }}{{ if .Think }}think{{ end }}{{ .Suffix }}"},
	{"unknown-message-field", "{{ range .Messages }}{{ .Name }}{{ end }}"},
	{"incompatible", "{{ eq .System 1 }}"},
	{"index-range", "{{ index .Messages 9 }}"},
	{"bad-syntax", "{{ if .System }}unclosed"},
}

var chats = []struct {
	system   string
	messages []Message
}{
	{"", []Message{{Role: "user", Content: "Hi"}}},
	{"", []Message{{Role: "system", Content: "You are terse."}, {Role: "user", Content: "Hi"},
		{Role: "assistant", Content: "Hello!"}, {Role: "user", Content: "How are you?"}}},
	{"Modelfile says <hi> & \"bye\"", []Message{{Role: "user", Content: "a"}, {Role: "user", Content: "b"},
		{Role: "assistant", Content: "x"}}},
	{"", []Message{{Role: "user", Content: "Hi"}, {Role: "assistant", Content: "Hel"}}},
	{"", []Message{{Role: "system", Content: "s1"}, {Role: "user", Content: "u"}, {Role: "system", Content: "s2"},
		{Role: "user", Content: "v"}}},
	{"Only a system prompt", nil},
}

func collate(system string, msgs []Message) (string, []Message) {
	var out []Message
	hasSystem := false
	for _, m := range msgs {
		if m.Role == "system" {
			hasSystem = true
		}
	}
	if system != "" && !hasSystem {
		out = append(out, Message{Role: "system", Content: system})
	}
	for _, m := range msgs {
		if n := len(out); n > 0 && out[n-1].Role == m.Role {
			out[n-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, m)
		}
	}
	var systems []string
	for _, m := range out {
		if m.Role == "system" {
			systems = append(systems, m.Content)
		}
	}
	return strings.Join(systems, "\n\n"), out
}

func usesMessages(n parse.Node) bool {
	found := false
	var walk func(n parse.Node)
	walk = func(n parse.Node) {
		if n == nil || found {
			return
		}
		switch t := n.(type) {
		case *parse.ListNode:
			if t != nil {
				for _, c := range t.Nodes {
					walk(c)
				}
			}
		case *parse.ActionNode:
			walk(t.Pipe)
		case *parse.IfNode:
			walk(t.Pipe)
			walk(t.List)
			walk(t.ElseList)
		case *parse.RangeNode:
			walk(t.Pipe)
			walk(t.List)
			walk(t.ElseList)
		case *parse.WithNode:
			walk(t.Pipe)
			walk(t.List)
			walk(t.ElseList)
		case *parse.PipeNode:
			if t != nil {
				for _, c := range t.Cmds {
					for _, a := range c.Args {
						walk(a)
					}
				}
			}
		case *parse.FieldNode:
			for _, id := range t.Ident {
				if id == "Messages" {
					found = true
				}
			}
		case *parse.VariableNode:
			for _, id := range t.Ident {
				if id == "Messages" {
					found = true
				}
			}
		case *parse.ChainNode:
			walk(t.Node)
			for _, id := range t.Field {
				if id == "Messages" {
					found = true
				}
			}
		}
	}
	walk(n)
	return found
}

// cutAfterResponse drops every text or action node after the first action that prints a .Response field,
// walking in document order; blocks stay, with their lists cut.
func cutAfterResponse(list *parse.ListNode) *parse.ListNode {
	cut := false
	var pipeHasResponse func(p *parse.PipeNode) bool
	pipeHasResponse = func(p *parse.PipeNode) bool {
		for _, c := range p.Cmds {
			for _, a := range c.Args {
				if f, ok := a.(*parse.FieldNode); ok {
					for _, id := range f.Ident {
						if id == "Response" {
							return true
						}
					}
				}
				if sub, ok := a.(*parse.PipeNode); ok && pipeHasResponse(sub) {
					return true
				}
			}
		}
		return false
	}
	var walkList func(l *parse.ListNode) *parse.ListNode
	walkList = func(l *parse.ListNode) *parse.ListNode {
		if l == nil {
			return nil
		}
		out := &parse.ListNode{NodeType: parse.NodeList, Pos: l.Pos}
		for _, n := range l.Nodes {
			if cut {
				break
			}
			switch t := n.(type) {
			case *parse.ActionNode:
				out.Nodes = append(out.Nodes, t)
				if pipeHasResponse(t.Pipe) {
					cut = true
				}
			case *parse.IfNode:
				c := *t
				c.List = walkList(t.List)
				c.ElseList = walkList(t.ElseList)
				out.Nodes = append(out.Nodes, &c)
			case *parse.RangeNode:
				c := *t
				c.List = walkList(t.List)
				c.ElseList = walkList(t.ElseList)
				out.Nodes = append(out.Nodes, &c)
			case *parse.WithNode:
				c := *t
				c.List = walkList(t.List)
				c.ElseList = walkList(t.ElseList)
				out.Nodes = append(out.Nodes, &c)
			default:
				out.Nodes = append(out.Nodes, n)
			}
		}
		return out
	}
	return walkList(list)
}

func render(text, system string, msgs []Message) (string, error) {
	t, err := template.New("").Funcs(funcs).Parse(text)
	if err != nil {
		return "", err
	}
	allSystem, collated := collate(system, msgs)
	var b bytes.Buffer
	if usesMessages(t.Tree.Root) {
		err = t.Execute(&b, map[string]any{
			"System": allSystem, "Messages": collated, "Prompt": "", "Response": "", "Tools": nil,
			"Suffix": "", "Think": false, "ThinkLevel": "", "IsThinkSet": false,
		})
		return b.String(), err
	}
	sys, prompt, response := "", "", ""
	execute := func(tt *template.Template) error {
		err := tt.Execute(&b, map[string]any{"System": sys, "Prompt": prompt, "Response": response})
		sys, prompt, response = "", "", ""
		return err
	}
	for _, m := range collated {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := execute(t); err != nil {
					return "", err
				}
			}
			sys = m.Content
		case "user":
			if response != "" {
				if err := execute(t); err != nil {
					return "", err
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	last, err := template.New("").Funcs(funcs).AddParseTree("", &parse.Tree{Root: cutAfterResponse(t.Tree.Root)})
	if err != nil {
		return "", err
	}
	if err := execute(last); err != nil {
		return "", err
	}
	return b.String(), nil
}

func main() {
	for _, tpl := range templates {
		for _, c := range chats {
			var enc strings.Builder
			for _, m := range c.messages {
				enc.WriteString(m.Role + "\x1f" + m.Content + "\x1e")
			}
			out, err := render(tpl.text, c.system, c.messages)
			res := "-"
			if err == nil {
				res = hex.EncodeToString([]byte(out))
			}
			fmt.Printf("%s\t%s\t%s\t%s\t%s\n", tpl.name, hex.EncodeToString([]byte(tpl.text)),
				hex.EncodeToString([]byte(c.system)), hex.EncodeToString([]byte(enc.String())), res)
		}
	}
}
