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
use File::Path qw(make_path);
use POSIX qw(WNOHANG);

my $prog = "run.pl";

sub usage_and_exit {
  my ($code) = @_;
  print STDERR "Usage: utils/run.pl [options] [JOB=1:N] <log-file> <command> [<args>...]\n"
             . "  Options: --max-jobs-run N, --num-threads N, --gpu N, --mem X, --time X,\n"
             . "           --name X, --config F, --num-nodes 1\n"
             . "  e.g.: utils/run.pl JOB=1:4 exp/log/work.JOB.log python work.py --part JOB\n";
  exit(defined $code ? $code : 1);
}

sub die_msg {
  print STDERR "$prog: $_[0]\n";
  exit 1;
}

sub num_cpus {
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

usage_and_exit() if @ARGV == 0;

# --- options and job range (they may be interleaved) ---------------------
my %opt = (
  gpu          => 0,
  mem          => undef,
  num_threads  => 1,
  max_jobs_run => undef,
  time         => undef,
  name         => undef,
  config       => undef,
  num_nodes    => 1,
);
my %integer_opt = (gpu => 0, num_threads => 1, max_jobs_run => 1, num_nodes => 1);  # value = minimum

my ($job_var, $job_start, $job_end);
while (@ARGV) {
  my $arg = $ARGV[0];
  if ($arg =~ /^--([^=]+)(?:=(.*))?$/s) {
    my ($raw, $val) = ($1, $2);
    shift @ARGV;
    usage_and_exit(0) if $raw eq 'help';
    my $key = $raw;
    $key =~ tr/-/_/;
    die_msg("unknown option --$raw") unless exists $opt{$key};
    if (!defined $val) {
      die_msg("option --$raw needs a value") unless @ARGV;
      $val = shift @ARGV;
    }
    if (exists $integer_opt{$key}) {
      die_msg("option --$raw expects a whole number, got '$val'") unless $val =~ /^\d+$/;
      die_msg("option --$raw must be at least $integer_opt{$key}, got $val")
        if $val < $integer_opt{$key};
    }
    $opt{$key} = $val;
  } elsif ($arg =~ /^([A-Za-z_]\w*)=(\d+)(?::(\d+))?$/) {
    die_msg("more than one job range given ($job_var=... and $arg)") if defined $job_var;
    ($job_var, $job_start, $job_end) = ($1, $2, defined $3 ? $3 : $2);
    die_msg("bad job range $arg: end is before start") if $job_end < $job_start;
    shift @ARGV;
  } else {
    last;
  }
}

usage_and_exit() if @ARGV < 2;
die_msg("--num-nodes $opt{num_nodes} is not possible: run.pl only runs on this machine")
  if $opt{num_nodes} > 1;

my $log_pattern = shift @ARGV;
my @words = @ARGV;

my $max_jobs = defined $opt{max_jobs_run} ? $opt{max_jobs_run} : num_cpus();

my @job_ids;
if (defined $job_var) {
  @job_ids = ($job_start .. $job_end);
  if (@job_ids > 1 && index($log_pattern, $job_var) < 0) {
    die_msg("the log file name '$log_pattern' does not contain $job_var, "
          . "but $job_var=$job_start:$job_end asks for " . scalar(@job_ids) . " jobs");
  }
} else {
  @job_ids = (undef);
}

# --- build the command text ----------------------------------------------
sub shell_quote_word {
  my ($w) = @_;
  $w =~ s/'/'\\''/g;
  return "'$w'";
}

sub command_text {
  my @w = @_;
  return $w[0] if @w == 1;
  return join(' ', map { ($_ eq '' || /\s/) ? shell_quote_word($_) : $_ } @w);
}

sub substitute {
  my ($s, $id) = @_;
  return $s unless defined $id;
  $s =~ s/\Q$job_var\E/$id/g;
  return $s;
}

# --- run the jobs -------------------------------------------------------------
$| = 1;
select((select(STDERR), $| = 1)[0]);

my %running;   # pid => { log => ..., start => ... }
my $num_failed = 0;

sub finish_job {
  my ($pid, $status) = @_;
  my $job = delete $running{$pid};
  return unless $job;
  my $rc;
  if ($status & 127) {
    $rc = 128 + ($status & 127);
  } else {
    $rc = $status >> 8;
  }
  my $elapsed = time() - $job->{start};
  if (open(my $fh, '>>', $job->{log})) {
    print $fh "# Accounting: time=$elapsed threads=$opt{num_threads}\n";
    print $fh "# Ended (code $rc) at " . scalar(localtime()) . "\n";
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
$SIG{INT}  = \&on_signal;
$SIG{TERM} = \&on_signal;
$SIG{HUP}  = \&on_signal;

my $single_job = (@job_ids == 1);
for my $id (@job_ids) {
  while (scalar(keys %running) >= $max_jobs) {
    last unless reap_one();
  }
  my $log = substitute($log_pattern, $id);
  my $cmd = command_text(map { substitute($_, $id) } @words);

  my $dir = dirname($log);
  if (!-d $dir) {
    eval { make_path($dir) };
    if (!-d $dir) {
      print STDERR "$prog: cannot create log directory $dir\n";
      $num_failed++;
      next;
    }
  }
  my $fh;
  if (!open($fh, '>', $log)) {
    print STDERR "$prog: cannot write log file $log: $!\n";
    $num_failed++;
    next;
  }
  print $fh "# $cmd\n";
  print $fh "# Started at " . scalar(localtime()) . "\n";
  close($fh);

  my $start = time();
  my $pid = fork();
  if (!defined $pid) {
    print STDERR "$prog: fork failed: $!\n";
    $num_failed++;
    next;
  }
  if ($pid == 0) {
    $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
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

if ($num_failed > 0) {
  print STDERR "$prog: $num_failed / " . scalar(@job_ids) . " failed, log is in $log_pattern\n";
  exit 1;
}
exit 0;
