#!/usr/bin/python3
"""Helpers for bitsd's benchmark scripts (stdlib + dbus-python; run with /usr/bin/python3).

  timed CMD                          run `sh -c CMD`, print "wall user sys" in seconds
                                     (user/sys: getrusage of the whole child tree, µs resolution)
  run ADDR URL DEST SIZE             CreateJob + AddFile + Resume, poll State until
                                     `transferred`, print "wall polls"; then Complete (untimed)
  start ADDR URL DEST                create + add + resume a job, print its object path
  kill-at ADDR JOB BYTES PID         poll BytesTransferred; once >= BYTES, SIGKILL PID and
                                     print "bytes_at_kill elapsed"
  wait ADDR JOB TIMEOUT              wait until the job is `transferred` (waiting for the daemon
                                     to reappear on the bus first), print "wall"
  complete ADDR JOB                  Complete the job, print the result
  get ADDR JOB PROP                  print a Job property
  cpu PID                            print utime+stime(+cutime+cstime) of PID and the live
                                     CPU time of its children, in seconds (/proc, clock ticks)
  sysbusy                            print the machine's busy CPU seconds so far (/proc/stat)
  summary TSV SIZE_BYTES             print the summary of a throughput run

Every wait is bounded; any failure exits non-zero with a message on stderr.
"""
import os
import signal
import statistics
import subprocess
import sys
import time

BUS_NAME = 'org.freedesktop.bits1'
MANAGER_PATH = '/org/freedesktop/bits1'
MANAGER_IFACE = 'org.freedesktop.bits1.Manager'
JOB_IFACE = 'org.freedesktop.bits1.Job'
PROPS = 'org.freedesktop.DBus.Properties'
POLL = float(os.environ.get('BENCH_POLL_MS', '5')) / 1000.0
TIMEOUT = float(os.environ.get('BENCH_JOB_TIMEOUT', '300'))
TCK = os.sysconf('SC_CLK_TCK')


def die(msg):
    sys.stderr.write('bitsbench: %s\n' % msg)
    sys.exit(1)


def bus(addr):
    import dbus
    return dbus.bus.BusConnection(addr)


def props(b, path):
    import dbus
    return dbus.Interface(b.get_object(BUS_NAME, path, introspect=False), PROPS)


def job_error(p):
    try:
        return str(tuple(str(x) for x in p.Get(JOB_IFACE, 'Error')))
    except Exception as e:  # noqa: BLE001
        return '(cannot read Error: %s)' % e


def create(b, url, dest):
    import dbus
    m = dbus.Interface(b.get_object(BUS_NAME, MANAGER_PATH, introspect=False), MANAGER_IFACE)
    _, path = m.CreateJob('bench', 'download')
    j = dbus.Interface(b.get_object(BUS_NAME, path, introspect=False), JOB_IFACE)
    j.AddFile(url, dest)
    j.Resume()
    return path, j


def wait_transferred(b, path, deadline):
    p = props(b, path)
    polls = 0
    while True:
        s = str(p.Get(JOB_IFACE, 'State'))
        polls += 1
        if s == 'transferred':
            return polls
        if s in ('error', 'cancelled', 'acknowledged'):
            die('job %s is %s: %s' % (path, s, job_error(p)))
        if time.monotonic() > deadline:
            die('job %s still %s after the timeout; Error=%s' % (path, s, job_error(p)))
        time.sleep(POLL)


def cmd_timed(cmd):
    t0 = time.monotonic()
    pid = os.spawnv(os.P_NOWAIT, '/bin/sh', ['sh', '-c', cmd])
    _, status, ru = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        die('command failed (status %d): %s' % (status, cmd))
    print('%.6f %.6f %.6f' % (wall, ru.ru_utime, ru.ru_stime))


def cmd_run(addr, url, dest):
    import dbus
    b = bus(addr)
    t0 = time.monotonic()
    path, j = create(b, url, dest)
    polls = wait_transferred(b, path, t0 + TIMEOUT)
    wall = time.monotonic() - t0
    r = j.Complete()
    if str(r) != 'complete':
        die('Complete() answered %s' % r)
    print('%.6f %d' % (wall, polls))


def cmd_start(addr, url, dest):
    path, _ = create(bus(addr), url, dest)
    print(path)


def cmd_kill_at(addr, path, nbytes, pid):
    b = bus(addr)
    p = props(b, path)
    t0 = time.monotonic()
    while True:
        done = int(p.Get(JOB_IFACE, 'BytesTransferred'))
        if done >= nbytes:
            os.kill(pid, signal.SIGKILL)
            print('%d %.3f' % (done, time.monotonic() - t0))
            return
        s = str(p.Get(JOB_IFACE, 'State'))
        if s in ('transferred', 'error', 'cancelled', 'acknowledged'):
            die('job reached %s before %d bytes (at %d): %s' % (s, nbytes, done, job_error(p)))
        if time.monotonic() - t0 > TIMEOUT:
            die('job did not reach %d bytes in time (at %d, %s)' % (nbytes, done, s))
        time.sleep(0.002)


def cmd_wait(addr, path, timeout):
    t0 = time.monotonic()
    deadline = t0 + timeout
    b = bus(addr)
    while True:  # the restarted daemon may not own its name yet
        try:
            if b.name_has_owner(BUS_NAME):
                break
        except Exception:  # noqa: BLE001
            pass
        if time.monotonic() > deadline:
            die('%s did not appear on the bus' % BUS_NAME)
        time.sleep(0.02)
    wait_transferred(b, path, deadline)
    print('%.3f' % (time.monotonic() - t0))


def cmd_complete(addr, path):
    import dbus
    j = dbus.Interface(bus(addr).get_object(BUS_NAME, path, introspect=False), JOB_IFACE)
    print(str(j.Complete()))


def cmd_get(addr, path, prop):
    print(props(bus(addr), path).Get(JOB_IFACE, prop))


def proc_ticks(pid, with_children):
    with open('/proc/%d/stat' % pid) as f:
        rest = f.read().rsplit(')', 1)[1].split()
    # rest[0] is field 3 (state); utime is field 14 -> rest[11]
    t = int(rest[11]) + int(rest[12])
    if with_children:
        t += int(rest[13]) + int(rest[14])
    return t


def children(pid):
    out = []
    try:
        for tid in os.listdir('/proc/%d/task' % pid):
            with open('/proc/%d/task/%s/children' % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cmd_cpu(pid):
    # The daemon, its reaped children (cutime/cstime) and its live children (file workers).
    t = proc_ticks(pid, True)
    for c in children(pid):
        try:
            t += proc_ticks(c, True)
        except OSError:
            pass
    print('%.2f' % (t / TCK))


def cmd_sysbusy():
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    print('%.2f' % (busy / TCK))


def cmd_summary(tsv, size):
    rows = []
    with open(tsv) as f:
        for line in f:
            if line.startswith('#') or not line.strip():
                continue
            r, peer, wall, cpu, sysbusy = line.split()
            rows.append((int(r), peer, float(wall), float(cpu), float(sysbusy)))
    peers = ['curl', 'bitsd', 'aria2c']
    by = {(r, p): (w, c, s) for r, p, w, c, s in rows}
    rounds = sorted({r for r, *_ in rows})
    med = statistics.median

    def mbps(w):
        return size / w / 1e6

    print()
    print('== summary over %d round(s), %d MiB, MB = 10^6 bytes ==' % (len(rounds), size >> 20))
    print('%-8s %12s %12s %14s %14s' % ('peer', 'median MB/s', 'median wall', 'median CPU s', 'median sysCPU s'))
    for p in peers:
        ws = [by[(r, p)][0] for r in rounds]
        cs = [by[(r, p)][1] for r in rounds]
        ss = [by[(r, p)][2] for r in rounds]
        print('%-8s %12.0f %11.3fs %14.2f %14.2f' % (p, med([mbps(w) for w in ws]), med(ws), med(cs), med(ss)))
    ratio_curl = med([by[(r, 'curl')][0] / by[(r, 'bitsd')][0] for r in rounds])
    ratio_aria = med([by[(r, 'aria2c')][0] / by[(r, 'bitsd')][0] for r in rounds])
    cpu_ratio = med([by[(r, 'bitsd')][1] / max(by[(r, 'curl')][1], 1e-9) for r in rounds])
    sys_ratio = med([by[(r, 'bitsd')][2] / max(by[(r, 'curl')][2], 1e-9) for r in rounds])
    print()
    print('median per-round speed ratio bitsd/curl    = %.2fx   (target >= 1.50x)' % ratio_curl)
    print('median per-round speed ratio bitsd/aria2c  = %.2fx' % ratio_aria)
    print('median per-round CPU ratio   bitsd/curl    = %.2f    (target <= 1.00; process CPU)' % cpu_ratio)
    print('median per-round sysCPU ratio bitsd/curl   = %.2f    (whole machine, informational)' % sys_ratio)
    speed_ok = ratio_curl >= 1.5
    cpu_ok = cpu_ratio <= 1.0
    print()
    if speed_ok and cpu_ok:
        print('RESULT: target met (bitsd %.2fx curl, CPU %.2fx curl)' % (ratio_curl, cpu_ratio))
    else:
        why = []
        if not speed_ok:
            why.append('speed %.2fx < 1.50x' % ratio_curl)
        if not cpu_ok:
            why.append('CPU %.2fx > 1.00x' % cpu_ratio)
        print('RESULT: target NOT met (%s)' % '; '.join(why))
    return 0


def main(argv):
    if len(argv) < 2:
        die('usage: see the module docstring')
    c, a = argv[1], argv[2:]
    if c == 'timed':
        cmd_timed(a[0])
    elif c == 'run':
        cmd_run(a[0], a[1], a[2])
    elif c == 'start':
        cmd_start(a[0], a[1], a[2])
    elif c == 'kill-at':
        cmd_kill_at(a[0], a[1], int(a[2]), int(a[3]))
    elif c == 'wait':
        cmd_wait(a[0], a[1], float(a[2]))
    elif c == 'complete':
        cmd_complete(a[0], a[1])
    elif c == 'get':
        cmd_get(a[0], a[1], a[2])
    elif c == 'cpu':
        cmd_cpu(int(a[0]))
    elif c == 'sysbusy':
        cmd_sysbusy()
    elif c == 'summary':
        cmd_summary(a[0], int(a[1]))
    else:
        die('unknown command %s' % c)


if __name__ == '__main__':
    try:
        main(sys.argv)
    except Exception as e:  # noqa: BLE001  (dbus errors etc.: one line, non-zero exit)
        die('%s: %s' % (type(e).__name__, e))
