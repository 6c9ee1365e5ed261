// goyamux: an interop and benchmark peer built on the UNMODIFIED Debian
// hashicorp/yamux (golang-github-hashicorp-yamux-dev), in GOPATH mode, offline:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(mktemp -d) GOFLAGS= \
//	    go build -o /tmp/goyamux ./tests/interop/goyamux
//
// Subcommands (all talk over a unix socket; every line on stdout is
// machine-readable, diagnostics go to stderr):
//
//	server -listen SOCK [-window N] [-backlog N] [-bufsize N] [-no-accept] [-goaway-after N]
//	       [-hangup] [-ping N [-ping-every D]] [-sink [-read-delay D]]
//	       [-conn-read-size N -conn-read-delay D]
//	    yamux server role. Prints READY once listening, then serves every
//	    connection as a session. Default: echo every accepted stream, Close
//	    after reading EOF. -no-accept never calls Accept (a full backlog makes
//	    Go answer SYNs with RST). -goaway-after N calls GoAway after the Nth
//	    accepted stream (0: as soon as the session starts), before echoing it.
//	    -hangup closes the session (transport, no Go Away) after the first
//	    read on the first stream. -ping N pings the client N times, D apart.
//	    -sink reads every accepted stream to its end instead of echoing it
//	    (reads of -bufsize bytes, -read-delay apart), checks the bytes
//	    against the pattern of stream (id-1)/2 and prints one SINK line.
//	    -conn-read-size/-conn-read-delay make yamux's receive loop lag: each
//	    read of the connection takes at most N bytes and waits D first, so
//	    frames stay in the socket while the streams' readers go on and send
//	    window updates (the race of a peer that closes its socket too soon).
//	    Lines: READY, GOAWAY, HANGUP, PING rtt_us=X, STREAM_RESET id=N,
//	    SINK id=N bytes=B pattern=ok|bad end=EOF|"error", SESSION_END
//
//	client -connect SOCK [-streams N] [-bytes B] [-window N] [-chunk C]
//	       [-ping N] [-expect-goaway] [-expect-reset] [-expect-refused] [-write-only]
//	    yamux client role. Opens N streams, writes B bytes on each (C-byte
//	    writes) with a concurrent reader, verifies the echo byte-exact, and
//	    only then calls Close (Debian's Read returns EOF early after Close).
//	    -write-only writes and closes without reading (line WRITE_OK ...).
//	    Lines: ECHO_OK streams=.. bytes=.. seconds=.. mibps=..,
//	    PING rtt_us=X, OPEN_REFUSED err=... (with -expect-goaway),
//	    RESET_SEEN (with -expect-reset), REFUSED by=rst|goaway (with
//	    -expect-refused: RST, or Open failed after a Go Away). Exit status 0
//	    on success.
//
//	bench -connect SOCK [-bytes B] [-streams 1,8] [-rtt 10000]
//	    Like client but without verification, for the benchmark. Lines:
//	    BENCH bulk streams=N bytes=B seconds=S mibps=M cpu_s=C (this process)
//	    BENCH rtt n=N p50_us=X p99_us=Y mean_us=Z
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// The test pattern: pseudo-random bytes with a period (1 MiB + 13) that does
// not line up with windows or write sizes. Stream i starts at offset i*7919.
// The same generator lives in the Python tests.
const patLen = 1<<20 + 13

var pattern = makePattern()

func makePattern() []byte {
	p := make([]byte, 2*patLen) // doubled so any slice up to patLen is contiguous
	x := uint32(0x9E3779B9)
	for i := 0; i < patLen; i++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		p[i] = byte(x >> 24)
	}
	copy(p[patLen:], p[:patLen])
	return p
}

// patternAt returns n (<= patLen) expected bytes of stream i at offset off.
func patternAt(i int, off int64, n int) []byte {
	start := int((off + int64(i)*7919) % patLen)
	return pattern[start : start+n]
}

func newConfig(window, backlog int) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false // as in Kata 1.x (agent and proxy)
	// A generous write timeout: on a loaded 2-core machine a 10 s stall of
	// the peer's reader is possible, and a Go write timeout leaves the frame
	// queued without charging the window (see research/yamux.md rule 20).
	cfg.ConnectionWriteTimeout = 30 * time.Second
	if window > 0 {
		cfg.MaxStreamWindowSize = uint32(window)
	}
	if backlog > 0 {
		cfg.AcceptBacklog = backlog
	}
	cfg.LogOutput = os.Stderr
	return cfg
}

// out serialises stdout lines from several goroutines.
var outMu sync.Mutex

func out(format string, args ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func main() {
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("goyamux: ")
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goyamux server|client|bench [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = runServer(os.Args[2:])
	case "client":
		err = runClient(os.Args[2:])
	case "bench":
		err = runBench(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		log.Printf("FAIL: %v", err)
		out("FAIL %v", err)
		os.Exit(1)
	}
}

// ---------------------------------------------------------------- server

type serverOpts struct {
	window, backlog, goawayAfter, pings, bufsize int
	pingEvery, readDelay, connReadDelay          time.Duration
	connReadSize                                 int
	noAccept, hangup, sink                       bool
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fs.String("listen", "", "unix socket path")
	var o serverOpts
	fs.IntVar(&o.window, "window", 0, "MaxStreamWindowSize (0: default 256 KiB)")
	fs.IntVar(&o.backlog, "backlog", 0, "AcceptBacklog (0: default 256)")
	fs.BoolVar(&o.noAccept, "no-accept", false, "never Accept (backlog fills, then RST)")
	fs.IntVar(&o.goawayAfter, "goaway-after", -1, "GoAway after this many accepted streams (0: at once)")
	fs.BoolVar(&o.hangup, "hangup", false, "close the session without Go Away after the first read")
	fs.IntVar(&o.pings, "ping", 0, "ping the client this many times")
	fs.DurationVar(&o.pingEvery, "ping-every", 0, "pause between those pings")
	fs.IntVar(&o.bufsize, "bufsize", 256*1024, "echo read buffer (bounds the echo's frame size)")
	fs.BoolVar(&o.sink, "sink", false, "read and check every stream to its end, echo nothing")
	fs.DurationVar(&o.readDelay, "read-delay", 0, "-sink: pause between reads")
	fs.IntVar(&o.connReadSize, "conn-read-size", 0, "read the connection at most N bytes at a time (0: no limit)")
	fs.DurationVar(&o.connReadDelay, "conn-read-delay", 0, "pause before each read of the connection")
	fs.Parse(args)
	if *listen == "" {
		return errors.New("server: -listen is required")
	}
	os.Remove(*listen)
	ln, err := net.Listen("unix", *listen)
	if err != nil {
		return err
	}
	out("READY")
	for {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		go serveConn(conn, o)
	}
}

// slowConn is a net.Conn whose reads are small and late: yamux's receive
// loop then lags behind what the peer has already written.
type slowConn struct {
	net.Conn
	size  int
	delay time.Duration
}

func (c *slowConn) Read(p []byte) (int, error) {
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	if c.size > 0 && len(p) > c.size {
		p = p[:c.size]
	}
	return c.Conn.Read(p)
}

func serveConn(conn net.Conn, o serverOpts) {
	if o.connReadSize > 0 || o.connReadDelay > 0 {
		conn = &slowConn{Conn: conn, size: o.connReadSize, delay: o.connReadDelay}
	}
	sess, err := yamux.Server(conn, newConfig(o.window, o.backlog))
	if err != nil {
		log.Printf("server: %v", err)
		conn.Close()
		return
	}
	defer func() {
		<-sess.CloseChan()
		out("SESSION_END")
	}()
	if o.pings > 0 {
		go doPings(sess, o.pings, o.pingEvery)
	}
	if o.goawayAfter == 0 {
		sendGoAway(sess)
	}
	if o.noAccept {
		return
	}
	for n := 1; ; n++ {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		if n == o.goawayAfter {
			sendGoAway(sess) // written before any echo of this stream
		}
		if o.hangup {
			buf := make([]byte, 1024)
			st.Read(buf)
			sess.Close() // closes the transport; Go never sends Go Away here
			out("HANGUP")
			return
		}
		if o.sink {
			go sink(st, o.bufsize, o.readDelay)
		} else {
			go echo(st, o.bufsize)
		}
	}
}

func sendGoAway(sess *yamux.Session) {
	if err := sess.GoAway(); err != nil {
		log.Printf("GoAway: %v", err)
	}
	out("GOAWAY")
}

func echo(st *yamux.Stream, bufsize int) {
	defer st.Close()
	buf := make([]byte, bufsize)
	for {
		n, err := st.Read(buf)
		if n > 0 {
			if _, werr := st.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			if err == yamux.ErrConnectionReset {
				out("STREAM_RESET id=%d", st.StreamID())
			} else {
				log.Printf("echo stream %d: %v", st.StreamID(), err)
			}
			return
		}
	}
}

// sink reads st steadily until its end and reports what arrived: the byte
// count, whether it matches the pattern of the stream (id-1)/2 (the Python
// client's stream index), and how the stream ended (EOF or Read's error).
// Debian's Read gives EOF, not an error, once the session is over and the
// buffer is empty, so a short count is the sign of lost data.
func sink(st *yamux.Stream, bufsize int, delay time.Duration) {
	defer st.Close()
	i := int((st.StreamID() - 1) / 2)
	buf := make([]byte, bufsize)
	var got int64
	match := "ok"
	for {
		// Debian misses the wake-up of a Read blocked when the session ends
		// (upstream #127): short deadlines make the Read look again.
		st.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := st.Read(buf)
		if err == yamux.ErrTimeout {
			continue
		}
		if n > 0 && err == yamux.ErrSessionShutdown {
			// Debian's Read returns data together with the error of the window
			// update it could not send once the session is down (upstream #95,
			// fixed after df201c7); the rest of the buffer is still readable.
			log.Printf("sink stream %d: read %d bytes with %v (Debian quirk, reading on)", st.StreamID(), n, err)
			err = nil
		}
		if n > 0 {
			for off := 0; off < n; off += patLen {
				end := off + patLen
				if end > n {
					end = n
				}
				if match == "ok" && !bytes.Equal(buf[off:end], patternAt(i, got+int64(off), end-off)) {
					match = "bad"
				}
			}
			got += int64(n)
		}
		if err == io.EOF {
			out("SINK id=%d bytes=%d pattern=%s end=EOF", st.StreamID(), got, match)
			return
		}
		if err != nil {
			out("SINK id=%d bytes=%d pattern=%s end=%q", st.StreamID(), got, match, err.Error())
			return
		}
		if delay > 0 {
			time.Sleep(delay)
		}
	}
}

func doPings(sess *yamux.Session, n int, every time.Duration) {
	for i := 0; i < n; i++ {
		time.Sleep(every)
		rtt, err := sess.Ping()
		if err != nil {
			out("PING_FAIL err=%q", err.Error())
			return
		}
		out("PING rtt_us=%d", rtt.Microseconds())
	}
}

// ---------------------------------------------------------------- client

func dial(path string, window int) (*yamux.Session, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, err
	}
	return yamux.Client(conn, newConfig(window, 0))
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	connect := fs.String("connect", "", "unix socket path")
	streams := fs.Int("streams", 1, "concurrent streams")
	size := fs.Int64("bytes", 1<<20, "bytes echoed per stream")
	window := fs.Int("window", 0, "MaxStreamWindowSize (0: default)")
	chunk := fs.Int("chunk", 64*1024, "write size")
	pings := fs.Int("ping", 0, "pings after the echo")
	expectGoaway := fs.Bool("expect-goaway", false, "after the echo, Open must fail with the remote go-away error")
	expectReset := fs.Bool("expect-reset", false, "every stream must fail with connection reset")
	expectRefused := fs.Bool("expect-refused", false, "every stream must be refused: RST, or Open fails after a Go Away")
	writeOnly := fs.Bool("write-only", false, "write the bytes and Close without reading any echo")
	fs.Parse(args)
	if *chunk <= 0 || *chunk > patLen {
		return fmt.Errorf("bad -chunk %d", *chunk)
	}
	sess, err := dial(*connect, *window)
	if err != nil {
		return err
	}
	defer sess.Close()

	start := time.Now()
	errs := make(chan error, *streams)
	for i := 0; i < *streams; i++ {
		go func(i int) {
			if *expectRefused {
				errs <- refusedStream(sess)
			} else if *writeOnly {
				errs <- writeStream(sess, i, *size, *chunk)
			} else {
				errs <- echoStream(sess, i, *size, *chunk, true)
			}
		}(i)
	}
	var failures []string
	for i := 0; i < *streams; i++ {
		err := <-errs
		switch {
		case *expectReset && err != nil && errors.Is(err, yamux.ErrConnectionReset):
			out("RESET_SEEN")
		case *expectReset:
			failures = append(failures, fmt.Sprintf("expected connection reset, got %v", err))
		case *expectRefused && errors.Is(err, yamux.ErrConnectionReset):
			out("REFUSED by=rst")
		case *expectRefused && errors.Is(err, yamux.ErrRemoteGoAway):
			out("REFUSED by=goaway")
		case *expectRefused:
			failures = append(failures, fmt.Sprintf("expected the stream to be refused, got %v", err))
		case err != nil:
			failures = append(failures, err.Error())
		}
	}
	if len(failures) > 0 {
		return fmt.Errorf("%d stream(s) failed: %s", len(failures), strings.Join(failures, "; "))
	}
	if *streams > 0 && !*expectReset && !*expectRefused {
		secs := time.Since(start).Seconds()
		total := float64(*size) * float64(*streams)
		what := "ECHO_OK"
		if *writeOnly {
			what = "WRITE_OK"
		}
		out("%s streams=%d bytes=%d seconds=%.3f mibps=%.1f", what, *streams, *size, secs, total/secs/(1<<20))
	}
	for i := 0; i < *pings; i++ {
		rtt, err := sess.Ping()
		if err != nil {
			return fmt.Errorf("ping: %w", err)
		}
		out("PING rtt_us=%d", rtt.Microseconds())
	}
	if *expectGoaway {
		st, err := sess.OpenStream()
		if err == nil {
			st.Close()
			return errors.New("Open succeeded after the peer's Go Away")
		}
		if err != yamux.ErrRemoteGoAway {
			return fmt.Errorf("Open after Go Away: unexpected error %v", err)
		}
		out("OPEN_REFUSED err=%q", err.Error())
	}
	return nil
}

// writeStream opens a stream, writes size bytes and closes it, reading nothing.
func writeStream(sess *yamux.Session, i int, size int64, chunk int) error {
	st, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer st.Close()
	for off := int64(0); off < size; {
		n := chunk
		if int64(n) > size-off {
			n = int(size - off)
		}
		if _, err := st.Write(patternAt(i, off, n)); err != nil {
			return fmt.Errorf("stream %d write at %d: %w", i, off, err)
		}
		off += int64(n)
	}
	return nil
}

// echoStream opens a stream, writes size bytes of stream i's pattern in
// chunk-sized writes while reading the echo concurrently, and (when verify)
// checks every byte. It closes the stream only after the whole echo has been
// read: Debian's Read may return EOF as soon as the stream is locally closed.
func echoStream(sess *yamux.Session, i int, size int64, chunk int, verify bool) error {
	st, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer st.Close()
	werr := make(chan error, 1)
	go func() {
		for off := int64(0); off < size; {
			n := chunk
			if int64(n) > size-off {
				n = int(size - off)
			}
			if _, err := st.Write(patternAt(i, off, n)); err != nil {
				werr <- fmt.Errorf("stream %d write at %d: %w", i, off, err)
				return
			}
			off += int64(n)
		}
		werr <- nil
	}()
	buf := make([]byte, 256*1024)
	for got := int64(0); got < size; {
		n, err := st.Read(buf)
		if n > 0 {
			if verify && !bytes.Equal(buf[:n], patternAt(i, got, n)) {
				return fmt.Errorf("stream %d: echo differs in bytes [%d, %d)", i, got, got+int64(n))
			}
			got += int64(n)
		}
		if err == io.EOF && got < size {
			return fmt.Errorf("stream %d: early EOF after %d of %d bytes", i, got, size)
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("stream %d read at %d: %w", i, got, err)
		}
	}
	return <-werr
}

// refusedStream opens a stream that the peer is expected to refuse and returns the
// error that shows it (ErrConnectionReset, or ErrRemoteGoAway from Open). Debian's
// yamux can miss the wake-up of a Read blocked when the RST arrives (upstream #127),
// so it reads with short deadlines and, after each, asks the stream's state with a
// Write, which fails with ErrConnectionReset once the RST has been processed.
func refusedStream(sess *yamux.Session) error {
	st, err := sess.OpenStream()
	if err != nil {
		return err
	}
	defer st.Close()
	buf := make([]byte, 4096)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		if _, err := st.Write([]byte("x")); err != nil {
			return err
		}
		st.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := st.Read(buf); err != nil && err != yamux.ErrTimeout {
			return err
		}
	}
	return fmt.Errorf("stream %d was not refused within 20s", st.StreamID())
}

// ---------------------------------------------------------------- bench

func runBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	connect := fs.String("connect", "", "unix socket path")
	size := fs.Int64("bytes", 64<<20, "bytes echoed per stream in bulk runs")
	streamList := fs.String("streams", "1,8", "comma-separated stream counts for bulk runs")
	trips := fs.Int("rtt", 10000, "64-byte round trips (0: skip)")
	fs.Parse(args)
	for _, s := range strings.Split(*streamList, ",") {
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		sess, err := dial(*connect, 0)
		if err != nil {
			return err
		}
		start, cpu0 := time.Now(), cpuSeconds()
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			go func(i int) { errs <- echoStream(sess, i, *size, 64*1024, false) }(i)
		}
		for i := 0; i < n; i++ {
			if err := <-errs; err != nil {
				return err
			}
		}
		secs, cpu := time.Since(start).Seconds(), cpuSeconds()-cpu0
		sess.Close()
		out("BENCH bulk streams=%d bytes=%d seconds=%.3f mibps=%.1f cpu_s=%.3f", n, *size, secs,
			float64(*size)*float64(n)/secs/(1<<20), cpu)
	}
	if *trips > 0 {
		sess, err := dial(*connect, 0)
		if err != nil {
			return err
		}
		defer sess.Close()
		st, err := sess.OpenStream()
		if err != nil {
			return err
		}
		msg := make([]byte, 64)
		reply := make([]byte, 64)
		lat := make([]time.Duration, *trips)
		for i := range lat {
			t0 := time.Now()
			if _, err := st.Write(msg); err != nil {
				return err
			}
			if _, err := io.ReadFull(st, reply); err != nil {
				return err
			}
			lat[i] = time.Since(t0)
		}
		st.Close()
		sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
		var sum time.Duration
		for _, d := range lat {
			sum += d
		}
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		out("BENCH rtt n=%d p50_us=%.1f p99_us=%.1f mean_us=%.1f", len(lat),
			us(lat[len(lat)/2]), us(lat[len(lat)*99/100]), us(sum/time.Duration(len(lat))))
	}
	return nil
}

// cpuSeconds is this process's user+system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
