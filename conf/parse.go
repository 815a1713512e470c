package conf

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load reads and parses the configuration file at path. Errors in the file
// are returned as *Errors; a file that cannot be read is an ordinary error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("conf: %w", err)
	}
	return Parse(path, data)
}

// Parse parses data, the contents of a configuration file; file names it in
// errors and in Config.File. It returns a Config with every default applied,
// or an *Errors listing every problem found.
func Parse(file string, data []byte) (*Config, error) {
	d, c := parse(file, data)
	if len(d.errs.List) > 0 {
		d.errs.sort()
		return nil, &d.errs
	}
	return c, nil
}

// LoadAdmin reads only [admin] from the file at path, for `hamr ctl`:
// problems elsewhere in the file (say, in an edit about to be reloaded
// and rejected), even TOML syntax errors, do not keep ctl from reaching
// the daemon. Errors are those of [admin].
func LoadAdmin(path string) (Admin, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Admin{}, fmt.Errorf("conf: %w", err)
	}
	d, c := parse(path, data)
	if c == nil {
		// A syntax error: read [admin] alone, at its own line numbers, so
		// that a mistake elsewhere is the daemon's to judge.
		d, c = parse(path, adminOnly(data))
	}
	var mine Errors
	for _, e := range d.errs.List {
		if c == nil || e.Key == "admin" || strings.HasPrefix(e.Key, "admin.") {
			mine.add(e)
		}
	}
	if len(mine.List) > 0 {
		mine.sort()
		return Admin{}, &mine
	}
	return c.Admin, nil
}

// adminOnly returns data with every line that does not set [admin]
// blanked, so that line numbers stay those of the file: the [admin]
// table, and top-level keys before any table that set it, dotted
// (admin.address = …, spaces around the dot allowed) or as an inline
// table (admin = { … }, which TOML keeps on one line).
func adminOnly(data []byte) []byte {
	lines := strings.Split(string(data), "\n")
	in, top := false, true
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			head, _, _ := strings.Cut(t, "#")
			head = strings.TrimSpace(head)
			in = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(head, "["), "]")) == "admin" && !strings.HasPrefix(head, "[[")
			top = false
		}
		key, _, _ := strings.Cut(t, "=")
		key = strings.Join(strings.Fields(key), "") // "admin . address"
		dotted := top && (strings.HasPrefix(key, "admin.") || key == "admin")
		if !in && !dotted {
			lines[i] = ""
		}
	}
	return []byte(strings.Join(lines, "\n"))
}

// parse decodes data into a Config with every default applied, collecting
// every problem in d.errs; the Config is nil after a syntax error.
func parse(file string, data []byte) (*decoder, *Config) {
	d := &decoder{file: file, src: string(data)}
	var top map[string]toml.Primitive
	md, err := toml.Decode(d.src, &top)
	if err != nil {
		d.syntaxError(err)
		return d, nil
	}
	d.root = &node{kids: make(map[string]*node, len(top)), line: 1}
	for k, p := range top {
		d.root.kids[k] = build(&md, toml.Key{k}, p)
	}

	// Defaults and cross-checks run even after errors, so one run reports
	// every problem; they skip values already rejected.
	c := d.decode()
	d.applyDefaults(c)
	d.validate(c)
	return d, c
}

// node is one key of the parsed file with the line it was written on. The
// TOML library exposes values by key but lines only through errors, so
// build collects both once and the section decoders work from the tree.
type node struct {
	key  toml.Key
	line int
	val  any              // the TOML value; nil for tables
	kids map[string]*node // non-nil for tables, inline or not
}

// probe fails every decode; the error it causes carries the line of the key
// being decoded.
type probe struct{}

var errProbe = errors.New("probe")

func (*probe) UnmarshalTOML(any) error { return errProbe }

// build turns the value p at key into a node, recursing into tables.
func build(md *toml.MetaData, key toml.Key, p toml.Primitive) *node {
	n := &node{key: key}
	var pe toml.ParseError
	if err := md.PrimitiveDecode(p, &probe{}); errors.As(err, &pe) {
		n.line = pe.Position.Line
	}
	// Type is "" for tables only implied by a dotted key or a deeper header
	// such as [routing.rw]; those are tables too.
	if typ := md.Type(key...); typ == "Hash" || typ == "" {
		var m map[string]toml.Primitive
		if err := md.PrimitiveDecode(p, &m); err == nil {
			n.kids = make(map[string]*node, len(m))
			for k, v := range m {
				kid := build(md, append(key[:len(key):len(key)], k), v)
				n.kids[k] = kid
				// An implied table has no line of its own: use its first key.
				if kid.line > 0 && (n.line == 0 || kid.line < n.line) && typ == "" {
					n.line = kid.line
				}
			}
			return n
		}
	}
	if err := md.PrimitiveDecode(p, &n.val); err != nil {
		n.val = nil
	}
	return n
}

// mysqlSection matches a mysqlrouter.conf section header, which is not
// valid TOML.
var mysqlSection = regexp.MustCompile(`^\s*\[\s*routing:([^\]]*)\]`)

// unquoted matches a key whose value starts like a bare word: a string
// written without quotes.
var unquoted = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*=\s*([^\s"'\[{#][^#]*?)\s*(#.*)?$`)

// syntaxError records a TOML parse failure, with a hint when the line is a
// mysqlrouter.conf section header.
func (d *decoder) syntaxError(err error) {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		d.errs.add(Error{File: d.file, Line: 1, Msg: err.Error()})
		return
	}
	e := Error{File: d.file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
	if strings.Contains(e.Msg, `got '\n'`) && strings.HasPrefix(strings.TrimSpace(d.srcLine(e.Line-1)), "[") {
		// The lexer has counted the newline that ended the broken header.
		e.Line--
	}
	if strings.HasPrefix(strings.TrimSpace(d.srcLine(e.Line)), "[") {
		e.Key = "" // LastKey is from the table before, not this header
	}
	line := d.srcLine(e.Line)
	if m := mysqlSection.FindStringSubmatch(line); m != nil {
		name := strings.TrimSpace(m[1])
		e.Key = "routing:" + name
		e.Msg = fmt.Sprintf("mysqlrouter-style section (use [routing.%s])", name)
	} else if m := unquoted.FindStringSubmatch(line); m != nil {
		// Values copied from mysqlrouter.conf or keepalived.conf are
		// unquoted; say how to write them when quoting alone fixes the line.
		key, val := m[1], m[2]
		if _, err := toml.Decode(fmt.Sprintf("x = %q", val), new(map[string]any)); err == nil {
			if strings.Contains(val, ",") {
				var q []string
				for _, v := range strings.Split(val, ",") {
					q = append(q, strconv.Quote(strings.TrimSpace(v)))
				}
				e.Msg += fmt.Sprintf(" (quote strings: %s = [%s])", key, strings.Join(q, ", "))
			} else {
				e.Msg += fmt.Sprintf(" (quote strings: %s = %q)", key, val)
			}
		}
	}
	d.errs.add(e)
}

// srcLine returns line n (1-based) of the source, or "".
func (d *decoder) srcLine(n int) string {
	if n < 1 {
		return ""
	}
	s := d.src
	for range n - 1 {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			return ""
		}
		s = s[i+1:]
	}
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// decoder holds the parse state of one file.
type decoder struct {
	file string
	src  string
	root *node
	errs Errors

	// Tables kept for applyDefaults and validate, which need to know
	// whether a key was written and on which line.
	sections map[string]*table // top-level sections; absent ones have a nil node
	badNames map[string]bool   // route and instance names already reported
	routeT   map[*Route]*table
	healthT  map[*Route]*table // [routing.NAME.health]; its node may be nil
	vrrpT    map[*VRRP]*table
	tracks   map[*VRRP]map[string]int // track_routes name -> line
}

// table is a TOML table being decoded. It remembers which keys the decoder
// asked for so done can report the rest as unknown.
type table struct {
	d    *decoder
	n    *node // nil when the table is absent from the file
	key  toml.Key
	used []string
}

func (d *decoder) table(key toml.Key, n *node) *table {
	return &table{d: d, n: n, key: key}
}

// path returns the dotted name of key in t.
func (t *table) path(key string) string {
	return append(t.key[:len(t.key):len(t.key)], key).String()
}

// line returns the line of key, or of the table when key is absent.
func (t *table) line(key string) int {
	if t.n == nil {
		return 1
	}
	if k := t.n.kids[key]; k != nil && k.line > 0 {
		return k.line
	}
	return t.n.line
}

// has reports whether key was written in the file.
func (t *table) has(key string) bool {
	return t.n != nil && t.n.kids[key] != nil
}

// get returns the node of key, or nil, and marks key as known.
func (t *table) get(key string) *node {
	if !slices.Contains(t.used, key) {
		t.used = append(t.used, key)
	}
	if t.n == nil {
		return nil
	}
	return t.n.kids[key]
}

// errorf records a problem with key, at the line of key.
func (t *table) errorf(key, format string, args ...any) {
	t.errorAt(t.line(key), key, format, args...)
}

func (t *table) errorAt(line int, key, format string, args ...any) {
	t.d.errs.add(Error{File: t.d.file, Line: line, Key: t.path(key), Msg: fmt.Sprintf(format, args...)})
}

// missing records that a required key is absent.
func (t *table) missing(key, allowed string) {
	t.errorf(key, "missing (required: %s)", allowed)
}

// sub returns the table at key; an absent key gives a table with a nil node.
func (t *table) sub(key string) *table {
	n := t.get(key)
	sub := t.d.table(append(t.key[:len(t.key):len(t.key)], key), nil)
	if n == nil {
		return sub
	}
	if n.kids == nil {
		t.errorf(key, "%s is %s (a table: [%s])", show(n.val), kind(n.val), t.path(key))
		return sub
	}
	sub.n = n
	return sub
}

// names returns the keys of t sorted, marking each as known.
func (t *table) names() []string {
	if t.n == nil {
		return nil
	}
	names := make([]string, 0, len(t.n.kids))
	for k := range t.n.kids {
		names = append(names, k)
		t.get(k)
	}
	slices.Sort(names)
	return names
}

// done reports every key of t that no decoder asked for. hints maps names
// from mysqlrouter.conf or keepalived.conf to advice.
func (t *table) done(hints map[string]string) {
	if t.n == nil {
		return
	}
	known := slices.Sorted(slices.Values(t.used))
	for _, k := range sortedKeys(t.n) {
		if slices.Contains(t.used, k) {
			continue
		}
		switch {
		case hints[k] != "":
			t.errorf(k, "unknown key (%s)", hints[k])
		case suggest(k, known) != "":
			t.errorf(k, "unknown key (did you mean %s?)", suggest(k, known))
		default:
			t.errorf(k, "unknown key (allowed: %s)", strings.Join(known, ", "))
		}
	}
}

// sortedKeys returns the keys of n in file order.
func sortedKeys(n *node) []string {
	keys := make([]string, 0, len(n.kids))
	for k := range n.kids {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if la, lb := n.kids[a].line, n.kids[b].line; la != lb {
			return la - lb
		}
		return strings.Compare(a, b)
	})
	return keys
}

// show formats a TOML value for a message.
func show(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = show(e)
		}
		s := "[" + strings.Join(parts, ", ") + "]"
		if len(s) > 60 {
			s = s[:57] + "..."
		}
		return s
	case map[string]any, []map[string]any, nil:
		return kind(v)
	case float64:
		s := strconv.FormatFloat(v, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eEnN") { // 2.0 must not read as 2
			s += ".0"
		}
		return s
	}
	return fmt.Sprint(v)
}

// kind names the TOML type of v with an article.
func kind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case nil:
		return "a table"
	}
	return "a date/time"
}

// written returns the value of key as the file wrote it, for messages.
func (t *table) written(key string) string {
	if n := t.get(key); n != nil {
		return show(n.val)
	}
	return ""
}

// typeError records that key holds the wrong TOML type.
func (t *table) typeError(key string, n *node, want string) {
	t.errorf(key, "%s is %s (%s)", show(n.val), kind(n.val), want)
}

// str returns the string at key. ok is false when the key is absent or not
// a string (which is reported).
func (t *table) str(key string) (s string, ok bool) {
	n := t.get(key)
	if n == nil {
		return "", false
	}
	if s, ok = n.val.(string); !ok {
		t.typeError(key, n, "a string")
	}
	return s, ok
}

// nonEmpty is str that also rejects "".
func (t *table) nonEmpty(key, allowed string) (string, bool) {
	s, ok := t.str(key)
	if ok && s == "" {
		t.errorf(key, "empty (%s)", allowed)
		return "", false
	}
	return s, ok
}

// oneOf returns the string at key if it is one of allowed.
func (t *table) oneOf(key, noun string, allowed ...string) (string, bool) {
	s, ok := t.str(key)
	if !ok {
		return "", false
	}
	if !slices.Contains(allowed, s) {
		list := strings.Join(allowed, " | ")
		if g := suggest(s, allowed); g != "" {
			t.errorf(key, "%q is not %s (%s; did you mean %s?)", s, noun, list, g)
		} else {
			t.errorf(key, "%q is not %s (%s)", s, noun, list)
		}
		return "", false
	}
	return s, true
}

func (t *table) boolean(key string) (b, ok bool) {
	n := t.get(key)
	if n == nil {
		return false, false
	}
	if b, ok = n.val.(bool); !ok {
		t.typeError(key, n, "true or false")
	}
	return b, ok
}

// integer returns the integer at key if it lies in [lo, hi]; noun names
// what it is in the message ("a port"), or "" for a plain range message.
func (t *table) integer(key string, lo, hi int64, noun string) (int, bool) {
	n := t.get(key)
	if n == nil {
		return 0, false
	}
	v, ok := n.val.(int64)
	if !ok {
		t.typeError(key, n, fmt.Sprintf("an integer %s", rangeText(lo, hi)))
		return 0, false
	}
	switch {
	case v >= lo && v <= hi:
		return int(v), true
	case noun != "":
		t.errorf(key, "%d is not %s (%s)", v, noun, rangeText(lo, hi))
	case v < lo:
		t.errorf(key, "%d is too small (%s)", v, rangeText(lo, hi))
	case hi == maxInt:
		t.errorf(key, "%d is too large (%d-%d)", v, lo, hi)
	default:
		t.errorf(key, "%d is too large (%s)", v, rangeText(lo, hi))
	}
	return 0, false
}

func rangeText(lo, hi int64) string {
	if hi == maxInt {
		return fmt.Sprintf("%d or more", lo)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

const maxInt = 1<<31 - 1

// duration returns the duration at key, written as a string such as
// "500ms". positive rejects zero; negative durations are always rejected.
func (t *table) duration(key string, positive bool) (time.Duration, bool) {
	n := t.get(key)
	if n == nil {
		return 0, false
	}
	switch v := n.val.(type) {
	case string:
		dur, err := time.ParseDuration(v)
		switch {
		case err != nil:
			t.errorf(key, "%q is not a duration (a number with a unit: \"500ms\", \"1s\", \"2m\")", v)
		case positive && dur <= 0:
			t.errorf(key, "%q is not allowed (a duration above 0, such as \"1s\")", v)
		case dur < 0:
			t.errorf(key, "%q is negative (0 or more, such as \"1s\")", v)
		default:
			return dur, true
		}
	case int64, float64:
		t.errorf(key, "%v has no unit (quote it with a unit: \"%vs\" or \"%vms\")", v, v, v)
	default:
		t.typeError(key, n, `a duration string such as "1s"`)
	}
	return 0, false
}

// durationIn returns the duration at key if it lies in [lo, hi]; zero is
// also allowed when zeroOK (the setting is then off). Values outside
// would flood a server or the LAN (too short) or overflow a deadline (too
// long).
func (t *table) durationIn(key string, lo, hi time.Duration, zeroOK bool) (time.Duration, bool) {
	dur, ok := t.duration(key, !zeroOK)
	switch {
	case !ok || dur == 0:
		return dur, ok
	case dur < lo:
		t.errorf(key, "%s is too short (%s)", t.written(key), durRange(lo, hi, zeroOK))
	case dur > hi:
		t.errorf(key, "%s is too long (%s)", t.written(key), durRange(lo, hi, zeroOK))
	default:
		return dur, true
	}
	return 0, false
}

func durRange(lo, hi time.Duration, zeroOK bool) string {
	r := fmtDur(lo) + " to " + fmtDur(hi)
	if zeroOK {
		r = "0 for off, or " + r
	}
	return r
}

// fmtDur writes d the way a config would: "10ms", "1h".
func fmtDur(d time.Duration) string {
	s := d.String() // "1h0m0s", "1m30s", "10ms"
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// strs returns the array of strings at key and the line of each element.
func (t *table) strs(key string) ([]string, []int, bool) {
	n := t.get(key)
	if n == nil {
		return nil, nil, false
	}
	arr, ok := n.val.([]any)
	if !ok {
		t.typeError(key, n, `an array of strings, such as ["a", "b"]`)
		return nil, nil, false
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			t.errorf(key, "element %s is %s (an array of strings)", show(e), kind(e))
			return nil, nil, false
		}
		out[i] = s
	}
	return out, t.d.elemLines(n, out), true
}

// elemLines finds the line of each element of the string array at n. The
// TOML library keeps lines only for keys, so this scans the source forward
// from the key for each quoted element in turn. An element it cannot find
// (an escape written differently) gets the key's line.
func (d *decoder) elemLines(n *node, elems []string) []int {
	lines := make([]int, len(elems))
	start := 0
	for range n.line - 1 {
		i := strings.IndexByte(d.src[start:], '\n')
		if i < 0 {
			start = len(d.src)
			break
		}
		start += i + 1
	}
	end := arrayEnd(d.src, start)
	pos, line := start, n.line
	for i, e := range elems {
		lines[i] = n.line
		j, q := -1, ""
		for _, cand := range []string{strconv.Quote(e), "'" + e + "'"} {
			if k := strings.Index(d.src[pos:end], cand); k >= 0 && (j < 0 || k < j) {
				j, q = k, cand
			}
		}
		if j < 0 {
			continue
		}
		line += strings.Count(d.src[pos:pos+j], "\n")
		lines[i] = line
		pos += j + len(q)
	}
	return lines
}

// keyLine matches the start of a line holding a key or a table header,
// which ends an array being scanned.
var keyLine = regexp.MustCompile(`(?m)^\s*([A-Za-z0-9_"'.-]+\s*=|\[\[?\s*[A-Za-z0-9_])`)

// arrayEnd returns where the array whose key starts at start can end: the
// next line that starts a key or a table.
func arrayEnd(src string, start int) int {
	i := strings.IndexByte(src[start:], '\n')
	if i < 0 {
		return len(src)
	}
	rest := start + i + 1
	if loc := keyLine.FindStringIndex(src[rest:]); loc != nil {
		return rest + loc[0]
	}
	return len(src)
}
