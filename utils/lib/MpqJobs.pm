package MpqJobs;
# Shared pieces of the job runners utils/run.pl and utils/slurm.pl: the command
# line ([options] [VAR=START:END] <log-file> <command> [<args>...]), the job
# range, how the command words become one bash command, the header and footer
# lines of a job's log file, and the final failure report.  See the header of
# utils/run.pl for the interface.
#
# Each runner calls setup($prog, $usage_text) first; error messages are then
# printed as "$prog: <message>" and usage_and_exit() prints $usage_text.

use strict;
use warnings;
use Exporter qw(import);
use File::Path qw(make_path);

our @EXPORT = qw(
  setup usage_and_exit die_msg parse_command_line job_ids
  shell_quote_word command_text substitute ensure_dir set_signal_handlers
  exit_code log_header log_footer ended_code exit_with_failures
);

my $prog  = '';
my $usage = '';

sub setup {
  ($prog, $usage) = @_;
}

sub usage_and_exit {
  my ($code) = @_;
  print STDERR $usage;
  exit(defined $code ? $code : 1);
}

sub die_msg {
  print STDERR "$prog: $_[0]\n";
  exit 1;
}

# --- command line --------------------------------------------------------------
# Options and the job range may be interleaved; the first other word is the log
# file.  Every option takes a value, as "--opt value" or "--opt=value", and
# dashes and underscores in option names are interchangeable.
# Returns (\%opt, $job_var, $job_start, $job_end, $log_pattern, @words); $job_var
# (and so the range) is undef when no VAR=START:END was given.
sub parse_command_line {
  my @args = @_;
  usage_and_exit() if @args == 0;

  my %opt = (
    gpu          => 0,
    mem          => undef,
    num_threads  => 1,
    num_nodes    => 1,
    max_jobs_run => undef,
    time         => undef,
    name         => undef,
    config       => undef,
  );
  my %integer_opt = (gpu => 0, num_threads => 1, max_jobs_run => 1, num_nodes => 1);  # value = minimum

  my ($job_var, $job_start, $job_end);
  while (@args) {
    my $arg = $args[0];
    if ($arg =~ /^--([^=]+)(?:=(.*))?$/s) {
      my ($raw, $val) = ($1, $2);
      shift @args;
      usage_and_exit(0) if $raw eq 'help';
      my $key = $raw;
      $key =~ tr/-/_/;
      die_msg("unknown option --$raw") unless exists $opt{$key};
      if (!defined $val) {
        die_msg("option --$raw needs a value") unless @args;
        $val = shift @args;
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
      shift @args;
    } else {
      last;
    }
  }

  usage_and_exit() if @args < 2;
  return (\%opt, $job_var, $job_start, $job_end, @args);
}

# The job indices (a single undef without a job range); dies if there is more
# than one job and the log file name does not contain the job variable.
sub job_ids {
  my ($log_pattern, $job_var, $job_start, $job_end) = @_;
  return (undef) unless defined $job_var;
  my @ids = ($job_start .. $job_end);
  if (@ids > 1 && index($log_pattern, $job_var) < 0) {
    die_msg("the log file name '$log_pattern' does not contain $job_var, "
          . "but $job_var=$job_start:$job_end asks for " . scalar(@ids) . " jobs");
  }
  return @ids;
}

# --- the command text ------------------------------------------------------------
sub shell_quote_word {
  my ($w) = @_;
  $w =~ s/'/'\\''/g;
  return "'$w'";
}

# A single word is used verbatim as a bash script; several words are joined
# with spaces, single-quoting those that are empty or contain whitespace.
sub command_text {
  my @w = @_;
  return $w[0] if @w == 1;
  return join(' ', map { ($_ eq '' || /\s/) ? shell_quote_word($_) : $_ } @w);
}

# $s with every occurrence of $job_var replaced by the job index $id (unchanged
# if $id is undef).
sub substitute {
  my ($s, $job_var, $id) = @_;
  return $s unless defined $id;
  $s =~ s/\Q$job_var\E/$id/g;
  return $s;
}

# --- processes and files ---------------------------------------------------------
# Creates the directory if needed; true if it exists afterwards.
sub ensure_dir {
  my ($dir) = @_;
  eval { make_path($dir) } unless -d $dir;
  return -d $dir;
}

# Sets the handler (a code ref, 'DEFAULT' or 'IGNORE') for INT, TERM and HUP.
sub set_signal_handlers {
  my ($handler) = @_;
  $SIG{$_} = $handler for qw(INT TERM HUP);
}

# The exit code of a finished process from its wait status ($?): 128 + N if it
# was killed by signal N.
sub exit_code {
  my ($status) = @_;
  return ($status & 127) ? 128 + ($status & 127) : ($status >> 8);
}

# --- the log file --------------------------------------------------------------------
# The log of a job is
#   # <command>
#   # Started at <date>
#   ...output...
#   # Accounting: time=<seconds> threads=<num-threads>
#   # Ended (code <exit status>) at <date>
# (the job script of utils/slurm.pl writes the same lines from bash).
sub log_header {
  my ($cmd) = @_;
  return "# $cmd\n"
       . "# Started at " . scalar(localtime()) . "\n";
}

sub log_footer {
  my ($elapsed, $threads, $rc) = @_;
  return "# Accounting: time=$elapsed threads=$threads\n"
       . "# Ended (code $rc) at " . scalar(localtime()) . "\n";
}

# The exit status in the last "# Ended (code N)" line of a log file; undef if
# the file cannot be read or has no such line.
sub ended_code {
  my ($log) = @_;
  open(my $fh, '<', $log) or return undef;
  my $code;
  while (my $l = <$fh>) {
    $code = $1 if $l =~ /^# Ended \(code (-?\d+)\)/;
  }
  close($fh);
  return $code;
}

# --- the end -----------------------------------------------------------------------------
sub exit_with_failures {
  my ($num_failed, $total, $log_pattern) = @_;
  print STDERR "$prog: $num_failed / $total failed, log is in $log_pattern\n";
  exit 1;
}

1;
