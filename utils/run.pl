#!/usr/bin/env perl
# utils/run.pl -- run a (possibly parallel) job on the local machine.
#
# Usage:
#   utils/run.pl [options] [VAR=START:END] <log-file> <command> [<args>...]
#
# Examples:
#   utils/run.pl exp/foo/log/prep.log local/prep.sh data/train
#   utils/run.pl JOB=1:4 exp/dec/log/decode.JOB.log \
#       python decode.py --keys exp/dec/keys.JOB.scp --out exp/dec/out.JOB.txt
#   utils/run.pl exp/foo/log/count.log "cut -f1 data/text | sort | uniq -c > counts"
#
# Options (each takes a value, as "--opt value" or "--opt=value"; dashes and
# underscores in option names are interchangeable):
#   --max-jobs-run N   at most N jobs run at the same time
#                      (default: the number of CPU cores)
#   --num-threads N    only reported in the log ("threads=N"); default 1
#   --gpu N            accepted for compatibility with cluster runners; ignored
#   --mem X            accepted; ignored
#   --time X           accepted; ignored
#   --name X           accepted; ignored
#   --config F         accepted; ignored
#   --num-nodes N      accepted if N is 1 (one machine is all we have)
#
# Job arrays: "VAR=START:END" (VAR is any identifier, usually JOB) runs the
# command END-START+1 times; in the log file name and in every command word,
# each occurrence of VAR is replaced by the job index.  "VAR=K" runs only job K.
# With more than one job the log file name must contain VAR.
#
# How the command is run: if it is a single word it is used verbatim as a bash
# script (so a quoted "a | b > c" works).  If it has several words they are
# joined with spaces; words that contain whitespace (or are empty) are
# single-quoted first so that they stay one word.  Shell syntax in the other
# words (e.g. an escaped \| or ">") is interpreted by bash.  The text is run with
# "bash -c", stdout and stderr going to the log file, which looks like
#   # <command>
#   # Started at <date>
#   ...output...
#   # Accounting: time=<seconds> threads=<num-threads>
#   # Ended (code <exit status>) at <date>
#
# Exit status: 0 if every job succeeded; otherwise 1, after printing
#   run.pl: <failed> / <total> failed, log is in <log-file>
# to stderr.

use strict;
use warnings;
use File::Basename qw(dirname);
use POSIX qw(WNOHANG);
use FindBin;
use lib "$FindBin::RealBin/lib";
use MpqJobs;

my $prog = "run.pl";

setup($prog,
      "Usage: utils/run.pl [options] [JOB=1:N] <log-file> <command> [<args>...]\n"
    . "  Options: --max-jobs-run N, --num-threads N, --gpu N, --mem X, --time X,\n"
    . "           --name X, --config F, --num-nodes 1\n"
    . "  e.g.: utils/run.pl JOB=1:4 exp/log/work.JOB.log python work.py --part JOB\n");

sub num_cpus {
  # nproc counts the cores this process may use, but reports OMP_NUM_THREADS instead when it is set (decode
  # jobs set it to 1 for each job): without these, jobs meant to run side by side would run one at a time
  delete local $ENV{OMP_NUM_THREADS};
  delete local $ENV{OMP_THREAD_LIMIT};
  if (open(my $fh, '-|', 'nproc 2>/dev/null')) {
    my $n = <$fh>;
    close($fh);
    return $1 if defined $n && $n =~ /^\s*(\d+)/ && $1 > 0;
  }
  if (open(my $fh, '<', '/proc/cpuinfo')) {
    my $n = grep { /^processor\s*:/ } <$fh>;
    close($fh);
    return $n if $n > 0;
  }
  return 1;
}

# --- options, job range, log file and command (see utils/lib/MpqJobs.pm) ------
my ($opt_ref, $job_var, $job_start, $job_end, $log_pattern, @words) = parse_command_line(@ARGV);
my %opt = %$opt_ref;
die_msg("--num-nodes $opt{num_nodes} is not possible: run.pl only runs on this machine")
  if $opt{num_nodes} > 1;

my $max_jobs = defined $opt{max_jobs_run} ? $opt{max_jobs_run} : num_cpus();

my @job_ids = job_ids($log_pattern, $job_var, $job_start, $job_end);

# --- run the jobs -------------------------------------------------------------
$| = 1;
select((select(STDERR), $| = 1)[0]);

my %running;   # pid => { log => ..., start => ... }
my $num_failed = 0;

sub finish_job {
  my ($pid, $status) = @_;
  my $job = delete $running{$pid};
  return unless $job;
  my $rc = exit_code($status);
  my $elapsed = time() - $job->{start};
  if (open(my $fh, '>>', $job->{log})) {
    print $fh log_footer($elapsed, $opt{num_threads}, $rc);
    close($fh);
  } else {
    print STDERR "$prog: could not append to log file $job->{log}: $!\n";
  }
  $num_failed++ if $rc != 0;
}

sub reap_one {
  my $pid = waitpid(-1, 0);
  return 0 if $pid <= 0;
  finish_job($pid, $?);
  return 1;
}

my $interrupted = 0;
sub on_signal {
  my ($sig) = @_;
  return if $interrupted;
  $interrupted = 1;
  $SIG{$sig} = 'IGNORE';
  kill('TERM', keys %running) if %running;
  while (%running) { last unless reap_one(); }
  print STDERR "$prog: interrupted by SIG$sig\n";
  exit 1;
}
set_signal_handlers(\&on_signal);

my $single_job = (@job_ids == 1);
for my $id (@job_ids) {
  while (scalar(keys %running) >= $max_jobs) {
    last unless reap_one();
  }
  my $log = substitute($log_pattern, $job_var, $id);
  my $cmd = command_text(map { substitute($_, $job_var, $id) } @words);

  my $dir = dirname($log);
  if (!ensure_dir($dir)) {
    print STDERR "$prog: cannot create log directory $dir\n";
    $num_failed++;
    next;
  }
  my $fh;
  if (!open($fh, '>', $log)) {
    print STDERR "$prog: cannot write log file $log: $!\n";
    $num_failed++;
    next;
  }
  print $fh log_header($cmd);
  close($fh);

  my $start = time();
  my $pid = fork();
  if (!defined $pid) {
    print STDERR "$prog: fork failed: $!\n";
    $num_failed++;
    next;
  }
  if ($pid == 0) {
    set_signal_handlers('DEFAULT');
    if (!$single_job) {
      open(STDIN, '<', '/dev/null') or POSIX::_exit(127);
    }
    open(STDOUT, '>>', $log) or POSIX::_exit(127);
    open(STDERR, '>&', \*STDOUT) or POSIX::_exit(127);
    exec('bash', '-c', $cmd) or do {
      print STDERR "$prog: cannot run bash: $!\n";
      POSIX::_exit(127);
    };
  }
  $running{$pid} = { log => $log, start => $start };
}

while (%running) { last unless reap_one(); }

exit_with_failures($num_failed, scalar(@job_ids), $log_pattern) if $num_failed > 0;
exit 0;
