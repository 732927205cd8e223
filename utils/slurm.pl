#!/usr/bin/env perl
# utils/slurm.pl -- run a (possibly parallel) job through Slurm, with the same
# command-line interface as utils/run.pl.
#
# Usage:
#   utils/slurm.pl [options] [VAR=START:END] <log-file> <command> [<args>...]
#
# Example (the form used by ESPnet's espnet2.bin.launch):
#   utils/slurm.pl --gpu 2 --num_threads 2 --num_nodes 2 exp/asr/train.log \
#       srun --export=ALL python -m espnet2.bin.asr_train ...
#
# Options (each takes a value, as "--opt value" or "--opt=value"; dashes and
# underscores in option names are interchangeable):
#   --gpu N            GPUs per node; N > 0 adds --gres=gpu:N
#   --mem X            memory, e.g. 8G; adds --mem=X
#   --num-threads N    CPU cores per task; adds --cpus-per-task=N (default 1)
#   --num-nodes N      nodes; N > 1 adds --nodes=N --ntasks-per-node=1, so that
#                      a command starting with "srun" runs once on every node
#   --time X           time limit, e.g. 2:00:00; adds --time=X
#   --name X           job name; adds --job-name=X (default: derived from the
#                      log file name)
#   --max-jobs-run N   at most N tasks of a job array run at once (--array=..%N)
#   --config F         read the config file F instead of conf/slurm.conf
#
# Job arrays: "VAR=START:END" (VAR is any identifier, usually JOB) submits one
# array job (--array=START-END); in each task, every occurrence of VAR in the
# log file name and in the command is replaced by $SLURM_ARRAY_TASK_ID.  With
# more than one task the log file name must contain VAR.
#
# What happens: a job script is written to <log-dir>/q/<base>.sh and submitted
# with "sbatch --wait ...", so this program returns when the job has finished.
# The job script cd's to the current directory, runs the command with
# "bash -c" (words are joined exactly as in utils/run.pl), and writes the
# command's stdout and stderr to the log file between the same header and footer
# lines that utils/run.pl writes ("# <command>", "# Started at ...",
# "# Accounting: time=... threads=...", "# Ended (code N) at ...").  Slurm's own
# output for the job goes to <log-dir>/q/<base>.*.out.  Afterwards the footer of
# every log file is checked; the exit status is 0 if all tasks ended with code 0,
# otherwise 1 after printing
#   slurm.pl: <failed> / <total> failed, log is in <log-file>
#
# Dry run: with the environment variable SLURM_PL_DRYRUN=1 the job script is
# still written, but instead of submitting it the sbatch command line and the
# job script are printed to stdout, and the exit status is 0.
#
# Config file (conf/slurm.conf if it exists, or the file given by --config).
# Blank lines and lines starting with "#" are ignored; every other line is a
# key followed by the rest of the line, which is split on whitespace (no
# quoting).  Keys:
#   command <program> [<args>]  submit with this instead of "sbatch"
#   extra <sbatch args>         added to every submission,
#                               e.g.  extra --partition=cpu --account=myproj
#   gpu_extra <sbatch args>     added only when --gpu > 0, e.g. --partition=gpu
#   cpu_extra <sbatch args>     added only when --gpu is 0
#   <option> <template>         change how one of our options (gpu, mem,
#                               num_threads, num_nodes, time, name) becomes sbatch
#                               args; "$0" in the template is the value, and an
#                               empty template drops the option.  Defaults:
#                                 gpu          --gres=gpu:$0
#                                 mem          --mem=$0
#                                 num_threads  --cpus-per-task=$0
#                                 num_nodes    --nodes=$0 --ntasks-per-node=1
#                                 time         --time=$0
#                                 name         --job-name=$0
#                               e.g.  mem --mem-per-cpu=$0

use strict;
use warnings;
use Cwd qw(getcwd);
use File::Basename qw(basename dirname);
use File::Spec;
use FindBin;
use lib "$FindBin::RealBin/lib";
use MpqJobs;

my $prog = "slurm.pl";

setup($prog,
      "Usage: utils/slurm.pl [options] [JOB=1:N] <log-file> <command> [<args>...]\n"
    . "  Options: --gpu N, --mem X, --num-threads N, --num-nodes N, --time X,\n"
    . "           --name X, --max-jobs-run N, --config F\n"
    . "  Set SLURM_PL_DRYRUN=1 to print the sbatch command and job script only.\n");

# --- options, job range, log file and command (see utils/lib/MpqJobs.pm) ------
my ($opt_ref, $job_var, $job_start, $job_end, $log_pattern, @words) = parse_command_line(@ARGV);
my %opt = %$opt_ref;

my @task_ids = job_ids($log_pattern, $job_var, $job_start, $job_end);

# --- config file -------------------------------------------------------------
my %template = (
  gpu         => '--gres=gpu:$0',
  mem         => '--mem=$0',
  num_threads => '--cpus-per-task=$0',
  num_nodes   => '--nodes=$0 --ntasks-per-node=1',
  time        => '--time=$0',
  name        => '--job-name=$0',
);
my @submit_program = ('sbatch');
my (@extra, @gpu_extra, @cpu_extra);

my $config = $opt{config};
if (defined $config) {
  die_msg("config file $config does not exist") unless -f $config;
} elsif (-f 'conf/slurm.conf') {
  $config = 'conf/slurm.conf';
}
if (defined $config) {
  open(my $fh, '<', $config) or die_msg("cannot read config file $config: $!");
  while (my $line = <$fh>) {
    chomp $line;
    $line =~ s/^\s+//;
    $line =~ s/\s+$//;
    next if $line eq '' || $line =~ /^#/;
    my ($key, $rest) = split(/\s+/, $line, 2);
    $rest = '' unless defined $rest;
    my @rest_words = split(/\s+/, $rest);
    if ($key eq 'command') {
      die_msg("$config:$.: 'command' needs a program") unless @rest_words;
      @submit_program = @rest_words;
    } elsif ($key eq 'extra') {
      push @extra, @rest_words;
    } elsif ($key eq 'gpu_extra') {
      push @gpu_extra, @rest_words;
    } elsif ($key eq 'cpu_extra') {
      push @cpu_extra, @rest_words;
    } elsif (exists $template{$key}) {
      $template{$key} = $rest;
    } else {
      die_msg("$config:$.: unknown key '$key' (see the header of utils/slurm.pl)");
    }
  }
  close($fh);
}

sub expand_template {
  my ($key, $value) = @_;
  my $t = $template{$key};
  $t =~ s/\$0/$value/g;
  return split(' ', $t);
}

# --- names and paths ------------------------------------------------------------
my $base = basename($log_pattern);
$base =~ s/\.log$//;
if (defined $job_var) {
  $base =~ s/\.?\Q$job_var\E//g;
}
$base =~ s/^\.+//;
$base = 'job' if $base eq '';

my $log_dir = dirname($log_pattern);
my $qdir = "$log_dir/q";
my $script = "$qdir/$base.sh";
my $job_name = defined $opt{name} ? $opt{name} : $base;

# --- the command text (same rules as utils/run.pl) ----------------------------
# Quote for display only when needed.
sub display_word {
  my ($w) = @_;
  return $w if $w =~ m{^[\w@%+=:,./-]+$};
  return shell_quote_word($w);
}

my $cmd = command_text(@words);

# --- sbatch command line ------------------------------------------------------------
my @sbatch = (@submit_program, '--wait', '--parsable');
push @sbatch, expand_template('name', $job_name);
push @sbatch, expand_template('gpu', $opt{gpu}) if $opt{gpu} > 0;
push @sbatch, expand_template('num_nodes', $opt{num_nodes}) if $opt{num_nodes} > 1;
push @sbatch, expand_template('num_threads', $opt{num_threads});
push @sbatch, expand_template('mem', $opt{mem}) if defined $opt{mem};
push @sbatch, expand_template('time', $opt{time}) if defined $opt{time};
if (defined $job_var) {
  my $array = "--array=$job_start-$job_end";
  $array .= "%$opt{max_jobs_run}" if defined $opt{max_jobs_run};
  push @sbatch, $array;
  push @sbatch, "--output=$qdir/$base.%A_%a.out";
} else {
  push @sbatch, "--output=$qdir/$base.%j.out";
}
push @sbatch, ($opt{gpu} > 0 ? @gpu_extra : @cpu_extra), @extra;
push @sbatch, $script;

my $sbatch_display = join(' ', map { display_word($_) } @sbatch);

# --- the job script -----------------------------------------------------------------
my $cwd = getcwd();
my $now = localtime();
my $js = "#!/usr/bin/env bash\n";
$js .= "# Job script written by utils/slurm.pl at $now.\n";
$js .= "# Submitted with: $sbatch_display\n";
$js .= "cd " . shell_quote_word($cwd) . " || exit 1\n";
$js .= "log=" . shell_quote_word($log_pattern) . "\n";
$js .= "cmd=" . shell_quote_word($cmd) . "\n";
if (defined $job_var) {
  $js .= "task=\${SLURM_ARRAY_TASK_ID:?this script must run as a Slurm array task}\n";
  $js .= "log=\${log//$job_var/\$task}\n";
  $js .= "cmd=\${cmd//$job_var/\$task}\n";
}
$js .= <<"EOS";
mkdir -p -- "\$(dirname -- "\$log")" || exit 1
{
  printf '# %s\\n' "\$cmd"
  printf '# Started at %s\\n' "\$(date)"
  printf '# Running on %s (Slurm job %s)\\n' "\$(hostname)" "\${SLURM_JOB_ID:-unknown}"
} > "\$log" || exit 1
start=\$(date +%s)
bash -c "\$cmd" >> "\$log" 2>&1
rc=\$?
end=\$(date +%s)
printf '# Accounting: time=%d threads=%d\\n' "\$((end - start))" $opt{num_threads} >> "\$log"
printf '# Ended (code %d) at %s\\n' "\$rc" "\$(date)" >> "\$log"
exit "\$rc"
EOS

ensure_dir($qdir) or die_msg("cannot create directory $qdir");
open(my $sfh, '>', $script) or die_msg("cannot write job script $script: $!");
print $sfh $js;
close($sfh) or die_msg("cannot write job script $script: $!");
chmod(0755, $script);

my $dry = $ENV{SLURM_PL_DRYRUN};
if (defined $dry && $dry ne '' && $dry ne '0') {
  print "# slurm.pl dry run (SLURM_PL_DRYRUN=$dry): would run\n";
  print "$sbatch_display\n";
  print "# ----- job script $script -----\n";
  print $js;
  print "# ----- end of job script -----\n";
  exit 0;
}

# --- submit and wait -----------------------------------------------------------------
sub find_in_path {
  my ($p) = @_;
  if ($p =~ m{/}) {
    return -x $p ? $p : undef;
  }
  for my $d (split(/:/, $ENV{PATH} || '')) {
    $d = '.' if $d eq '';
    my $f = File::Spec->catfile($d, $p);
    return $f if -f $f && -x $f;
  }
  return undef;
}

if (!defined find_in_path($submit_program[0])) {
  die_msg("'$submit_program[0]' was not found on PATH, so the job cannot be submitted "
        . "(is Slurm installed here? Use utils/run.pl to run locally, or set "
        . "SLURM_PL_DRYRUN=1 to only print the submission)");
}

$| = 1;
my @launch = @sbatch;
# sbatch prints the job id before waiting; make sure it is not held in a buffer
# so that an interrupted slurm.pl can cancel the job.
my $stdbuf = find_in_path('stdbuf');
unshift @launch, $stdbuf, '-oL' if defined $stdbuf;

my $job_id;
my $sbatch_pid = open(my $ph, '-|');
die_msg("cannot fork: $!") unless defined $sbatch_pid;
if ($sbatch_pid == 0) {
  exec(@launch) or do { print STDERR "$prog: cannot run $launch[0]: $!\n"; exit 127; };
}

sub on_signal {
  my ($sig) = @_;
  $SIG{$sig} = 'IGNORE';
  kill('TERM', $sbatch_pid);
  if (defined $job_id && defined find_in_path('scancel')) {
    print STDERR "$prog: interrupted by SIG$sig; cancelling Slurm job $job_id\n";
    system('scancel', $job_id);
  } else {
    print STDERR "$prog: interrupted by SIG$sig; the Slurm job may still be queued "
               . "or running (check squeue for job name '$job_name')\n";
  }
  exit 1;
}
set_signal_handlers(\&on_signal);

while (my $line = <$ph>) {
  if (!defined $job_id && $line =~ /^\s*(\d+)(?:;\S*)?\s*$/) {
    $job_id = $1;
    print STDERR "$prog: submitted Slurm job $job_id ($job_name), waiting for it to finish\n";
  } else {
    print $line;
  }
}
close($ph);
my $sbatch_status = $?;
my $sbatch_rc = exit_code($sbatch_status);
set_signal_handlers('DEFAULT');

if (!defined $job_id && $sbatch_rc != 0) {
  print STDERR "$prog: submission failed (exit status $sbatch_rc): $sbatch_display\n";
  exit_with_failures(scalar(@task_ids), scalar(@task_ids), $log_pattern);
}

# --- collect the results from the log files --------------------------------------
my %code;
# Log files may show up late on network file systems; wait a little for them.
my $patience = $sbatch_rc == 0 ? 30 : 3;
my $waited = 0;
while (1) {
  for my $id (@task_ids) {
    my $key = defined $id ? $id : '';
    next if defined $code{$key};
    $code{$key} = ended_code(substitute($log_pattern, $job_var, $id));
  }
  last if !grep { !defined $code{defined $_ ? $_ : ''} } @task_ids;
  last if $waited >= $patience;
  sleep 1;
  $waited++;
}

my $num_failed = grep { my $c = $code{defined $_ ? $_ : ''}; !defined $c || $c != 0 } @task_ids;
exit_with_failures($num_failed, scalar(@task_ids), $log_pattern) if $num_failed > 0;
exit 0;
