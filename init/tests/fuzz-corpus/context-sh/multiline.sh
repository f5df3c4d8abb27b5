A='line1
line2'
B="x\"y"
C=plain\ word
