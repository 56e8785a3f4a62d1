keep;
stop;
discard;
